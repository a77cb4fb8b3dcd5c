"""The history transformer: the incremental cache computes exactly what a full re-encode computes."""

from __future__ import annotations

import copy

import pytest
import torch

from retentionrl.nets.actor_critic import soft_update
from retentionrl.nets.encoders import FeatureEncoder, HistoryTransformer
from retentionrl.nets.optim import adam


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


@pytest.mark.parametrize("layers", [1, 2])
def test_last_state_equals_the_full_forward_at_the_newest_token(layers):
    """The agents' encoder computes the top layer at two positions only: same value and gradients as the full
    forward, for full, partly padded and empty histories (left-padded, as the env's observations are)."""
    torch.manual_seed(0)
    B, D, n = 4, 16, 9
    net = HistoryTransformer(D, 7, 5, layers=layers, heads=2, dropout=0.0)
    user, items = torch.randn(B, D, requires_grad=True), torch.randn(B, n, D)
    resp = torch.randint(0, 2, (B, n, 8)).float()
    pad = torch.zeros(B, n, dtype=torch.bool)
    pad[1, :4] = True  # five exposures
    pad[2, :] = True  # no history yet: the state is the user token's output
    pad[3, :-1] = True  # one exposure
    full = net(user, items, resp, pad)
    want = torch.where(pad[:, -1:], full[:, 0], full[:, -1])
    got = net.last_state(user, items, resp, pad)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got[2], full[2, -1], atol=1e-3)  # the empty row really took the user token
    g_want = torch.autograd.grad(want.square().sum(), [user, *net.parameters()])
    g_got = torch.autograd.grad(got.square().sum(), [user, *net.parameters()])
    for a, b in zip(g_want, g_got):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_adam_and_multi_tensor_polyak_compute_the_per_tensor_updates():
    """The agents' ``adam`` (fused kernel) and ``soft_update`` (one multi-tensor lerp) must compute what the
    per-tensor loops compute — Polyak bitwise, Adam up to float rounding — or a speed-up would change results."""
    torch.manual_seed(0)
    a = HistoryTransformer(16, 7, 5, layers=2, dropout=0.0)
    b, start = copy.deepcopy(a), copy.deepcopy(a)
    oa, ob = adam(a.parameters(), 3e-4, weight_decay=1e-4), torch.optim.Adam(b.parameters(), 3e-4, weight_decay=1e-4, foreach=False)
    user, items, resp = torch.randn(4, 16), torch.randn(4, 6, 16), torch.rand(4, 6, 8)
    for _ in range(5):
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            net(user, items, resp).square().mean().backward()
            opt.step()
    # Rounding differs by CPU (fused vs per-op kernels, FMA or not), and Adam amplifies it where a gradient is
    # below eps (steps of about lr * g / eps): 1.6e-6 seen on an AMD EPYC. A wrong update is off by about lr.
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-2 * 3e-4)
    moved = max((p - s0).abs().max().item() for p, s0 in zip(a.parameters(), start.parameters()))
    assert moved > 4 * 3e-4  # five real Adam steps of about lr each

    ta, tb = copy.deepcopy(start), copy.deepcopy(start)
    for _ in range(3):
        soft_update(a, ta, 0.005)
        with torch.no_grad():
            for p, pt in zip(a.parameters(), tb.parameters()):
                pt.lerp_(p, 0.005)
    for x, y, s0 in zip(ta.parameters(), tb.parameters(), start.parameters()):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, s0) for x, s0 in zip(ta.parameters(), start.parameters()))


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


def test_feature_encoder_is_the_sum_of_per_column_embeddings_and_keeps_per_column_state():
    """One merged table computes sum_j E_j[code_j mod bucket_j]; its state dict holds one table per column (the
    layout of every bundle and checkpoint saved before the merge, which a fingerprint hashes) and loads back."""
    torch.manual_seed(0)
    enc = FeatureEncoder([3, 5, 10_000], 2, 4)
    cat, num = torch.tensor([[2, 4, 9_000], [0, 1, 3]]), torch.randn(2, 2)
    blocks = enc.table.weight.split(enc.buckets)  # column j's table
    want = sum(blocks[j][cat[:, j] % enc.buckets[j]] for j in range(3)) + enc.numeric(num)
    assert torch.allclose(enc(cat, num), enc.norm(want), atol=1e-6)
    assert enc.buckets[2] == 4096 and torch.equal(blocks[2][9_000 % 4096], enc.table.weight[3 + 5 + 9_000 % 4096])
    state = enc.state_dict()
    assert sorted(state) == ["embeds.0.weight", "embeds.1.weight", "embeds.2.weight", "norm.bias", "norm.weight",
                             "numeric.bias", "numeric.weight"]
    assert [tuple(state[f"embeds.{j}.weight"].shape) for j in range(3)] == [(3, 4), (5, 4), (4096, 4)]
    fresh = FeatureEncoder([3, 5, 10_000], 2, 4)
    fresh.load_state_dict({k: v + 1.0 for k, v in state.items()})
    assert torch.equal(fresh.table.weight, enc.table.weight + 1.0)
    outer = torch.nn.Sequential(enc)  # nested: the keys carry the prefix
    assert "0.embeds.2.weight" in outer.state_dict() and "0.table.weight" not in outer.state_dict()


def test_soft_update_refuses_a_target_that_is_not_a_copy_of_the_network():
    net, other = torch.nn.Linear(3, 2), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="not a copy"):
        soft_update(net, other, 0.5)
    with pytest.raises(ValueError, match="not a copy"):
        soft_update(net, torch.nn.Linear(2, 3), 0.5)  # same count, other shapes
    target = torch.nn.Linear(3, 2)
    before = target.weight.detach().clone()
    soft_update(net, target, 0.5)
    assert torch.allclose(target.weight, 0.5 * before + 0.5 * net.weight.detach())


def test_one_encoder_pass_over_two_batches_gives_each_row_its_own_state(tiny_sim):
    """``cat_obs`` lets RLUR and GFN4Retention encode s and s' in one pass: the state encoder has no cross-row
    operation, so each row's state must be what a pass over its own batch gives."""
    from retentionrl.nets.actor_critic import AgentSpec, encoder
    from retentionrl.spaces import cat_obs

    env = tiny_sim.make_env("kuaisim", n_users=6, users="train")
    first = env.reset(seed=0)
    second = env.step(torch.rand(6, 7) * 2 - 1).obs
    second = env.step(torch.rand(6, 7) * 2 - 1).obs  # two exposures of history more
    torch.manual_seed(0)
    enc = encoder(AgentSpec.from_env(tiny_sim, env.cfg), 16, 8)
    both = enc(cat_obs(first, second))
    assert both.shape == (12, 16)
    assert torch.allclose(both[:6], enc(first), atol=1e-6) and torch.allclose(both[6:], enc(second), atol=1e-6)
    assert not torch.allclose(both[:6], both[6:], atol=1e-3)  # the two batches really differ


def test_compiled_encoders_compute_the_eager_function_and_keep_the_state_dict(tiny_sim):
    """The run option ``compile: true`` compiles the state encoders in place: same outputs and gradients up to
    float rounding, the same state-dict keys (checkpoints load either way), and an unset option leaves every saved
    config — and so every grid cell's key — as it was."""
    from retentionrl.config import to_dict
    from retentionrl.nets.actor_critic import AgentSpec, Critic
    from retentionrl.nets.state import compile_encoders
    from retentionrl.training.online import TrainConfig

    env = tiny_sim.make_env("kuaisim", n_users=6, users="train")
    obs = env.reset(seed=0)
    obs = env.step(torch.rand(6, 7) * 2 - 1).obs
    torch.manual_seed(0)
    eager = Critic(AgentSpec.from_env(tiny_sim, env.cfg), 16, 8, [16])
    compiled = copy.deepcopy(eager)
    assert compile_encoders([compiled]) == 1
    assert list(compiled.state_dict()) == list(eager.state_dict())
    a = torch.rand(6, 7) * 2 - 1
    q_e, q_c = eager(obs, a), compiled(obs, a)
    assert torch.allclose(q_e, q_c, atol=1e-5)
    g_e = torch.autograd.grad(q_e.square().sum(), list(eager.parameters()))
    g_c = torch.autograd.grad(q_c.square().sum(), list(compiled.parameters()))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(g_e, g_c))
    assert "compile" not in to_dict(TrainConfig()) and to_dict(TrainConfig(compile=True))["compile"] is True
