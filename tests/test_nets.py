"""The history transformer: the incremental cache computes exactly what a full re-encode computes."""

from __future__ import annotations

import pytest
import torch

from retentionrl.nets.encoders import HistoryTransformer


@pytest.mark.parametrize("chunks", [[1] * 14, [2, 3, 4, 1, 3], [4, 4, 4, 2]])
def test_incremental_extension_matches_full_forward(chunks):
    torch.manual_seed(0)
    B, D, window, n0 = 3, 16, 5, 3
    net = HistoryTransformer(D, 7, window, layers=2, heads=2).eval()
    n = n0 + sum(chunks)
    user = torch.randn(B, D)
    items = torch.randn(B, n, D)
    resp = torch.randint(0, 2, (B, n, 8)).float()
    with torch.no_grad():
        full = net(user, items, resp, torch.zeros(B, n, dtype=torch.bool))  # (B, 1 + n, D)
        cache = net.init_cache(user, items[:, :n0], resp[:, :n0], torch.zeros(B, n0, dtype=torch.bool))
        assert torch.allclose(cache.state, full[:, n0], atol=1e-5)
        at = n0
        for k in chunks:
            cache = net.extend(cache, items[:, at : at + k], resp[:, at : at + k])
            at += k
            assert torch.allclose(cache.state, full[:, at], atol=1e-5), at


def test_extend_refuses_more_than_the_window():
    net = HistoryTransformer(8, 7, 4).eval()
    with torch.no_grad():
        cache = net.init_cache(torch.randn(1, 8), torch.randn(1, 2, 8), torch.zeros(1, 2, 8), torch.zeros(1, 2, dtype=torch.bool))
        with pytest.raises(ValueError, match="cannot append 4 exposures"):
            net.extend(cache, torch.randn(1, 4, 8), torch.zeros(1, 4, 8))


def test_ring_assign_rotates_fresh_rows():
    """Refilling one row of a cache whose ring has advanced gives that row the same future as a fresh cache."""
    torch.manual_seed(2)
    D, window = 8, 4
    net = HistoryTransformer(D, 7, window).eval()
    user, items, resp = torch.randn(2, D), torch.randn(2, 9, D), torch.randint(0, 2, (2, 9, 8)).float()
    nopad = torch.zeros(2, 2, dtype=torch.bool)
    with torch.no_grad():
        cache = net.init_cache(user, items[:, :2], resp[:, :2], nopad)
        net.extend(cache, items[:, 2:4], resp[:, 2:4])  # ring start moves to 2
        fresh = net.init_cache(user[1:], items[1:, :2], resp[1:, :2], nopad[1:])
        cache.assign(torch.tensor([False, True]), fresh)
        net.extend(cache, items[:, 4:7], resp[:, 4:7])
        net.extend(fresh, items[1:, 4:7], resp[1:, 4:7])
        assert torch.allclose(cache.state[1], fresh.state[0], atol=1e-5)


def test_window_limits_what_a_state_sees():
    """Changing an exposure more than `window` tokens back does not change the state (2 layers: 2*(w-1))."""
    torch.manual_seed(1)
    D, window, n = 8, 3, 12
    net = HistoryTransformer(D, 7, window, layers=2).eval()
    user, items, resp = torch.randn(1, D), torch.randn(1, n, D), torch.zeros(1, n, 8)
    with torch.no_grad():
        base = net(user, items, resp)[:, -1]
        far = items.clone()
        far[:, n - 1 - 2 * (window - 1) - 1] += torch.randn(D)  # just outside the receptive field of the last token
        assert torch.allclose(net(user, far, resp)[:, -1], base, atol=1e-6)
        near = items.clone()
        near[:, n - 2] += torch.randn(D)
        assert not torch.allclose(net(user, near, resp)[:, -1], base, atol=1e-3)


def test_empty_history_state_is_the_user_token():
    net = HistoryTransformer(8, 7, 4).eval()
    user = torch.randn(2, 8)
    with torch.no_grad():
        cache = net.init_cache(user, torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
        alone = net(user, torch.zeros(2, 0, 8), torch.zeros(2, 0, 8))[:, 0]
    assert torch.allclose(cache.state, alone, atol=1e-6)


def test_critic_for_actor_has_forward_values_and_action_gradients(tiny_sim):
    """The actor losses call Critic.for_actor: same Q values and same dQ/da as forward, no encoder gradients."""
    from retentionrl.nets.actor_critic import AgentSpec, Critic
    from retentionrl.simulator.env import preset

    torch.manual_seed(0)
    env = tiny_sim.make_env("kuaisim", n_users=4)
    obs = env.reset(seed=0)
    critic = Critic(AgentSpec.from_env(tiny_sim, preset("kuaisim")), 16, 8, [16])
    grads, action = [], torch.rand(4, 7)
    for fn in (critic.forward, critic.for_actor):
        a = action.clone().requires_grad_(True)
        critic.zero_grad(set_to_none=True)
        q = fn(obs, a)
        q.sum().backward()
        grads.append((q.detach(), a.grad.clone(), [p.grad for p in critic.enc.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])
    assert any(g is not None for g in grads[0][2]) and all(g is None for g in grads[1][2])
