"""CEM over the fusion weights: the elite refit by hand, seeds, checkpoint round trip, and learning on tiny_sim."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from retentionrl.agents import cem
from retentionrl.agents.cem import CEM, CEMConfig
from retentionrl.errors import RetentionRLError

B = 8


def _obs(b: int = B) -> SimpleNamespace:
    return SimpleNamespace(user=torch.zeros(b, dtype=torch.long))


def _out(reward, retention=None, session_end=None, episode_end=None) -> SimpleNamespace:
    reward = torch.as_tensor(reward, dtype=torch.float32)
    zeros = torch.zeros_like(reward)
    return SimpleNamespace(
        reward=reward,
        retention_reward=zeros if retention is None else torch.as_tensor(retention, dtype=torch.float32),
        session_end=torch.zeros(len(reward), dtype=torch.bool) if session_end is None else session_end,
        episode_end=torch.zeros(len(reward), dtype=torch.bool) if episode_end is None else episode_end,
    )


def _stream(n: int, seed: int = 0, b: int = B) -> list[SimpleNamespace]:
    g = torch.Generator().manual_seed(seed)
    outs = []
    for t in range(n):
        end = torch.rand(b, generator=g) < 0.3
        outs.append(_out(torch.rand(b, generator=g), -torch.rand(b, generator=g) * end, end, end & (t % 3 == 0)))
    return outs


def _run(agent: CEM, stream) -> list[torch.Tensor]:
    actions = []
    for out in stream:
        a = agent.act(_obs(), explore=True)
        agent.observe(_obs(), a, out)
        actions.append(a)
    return actions


def test_refit_moves_mu_to_the_mean_of_the_elite():
    agent = CEM(CEMConfig(steps_per_generation=3, elite_frac=0.25, smoothing=0.0, min_sigma=0.0,
                          retention_weight=1.0, immediate_weight=0.5), seed=4)
    assert torch.equal(agent.act(_obs(), explore=False), torch.zeros(B, 7))
    cand = agent.act(_obs(), explore=True)
    assert cand.shape == (B, 7) and cand.abs().max() <= 1 and len({tuple(r.tolist()) for r in cand}) == B
    assert torch.equal(agent.act(_obs(), explore=True), cand)  # the same candidates all generation long
    # Rows 2 and 5 are the best. Row 5's episode ends after step 1: the new user keeps scoring candidate 5.
    imm = torch.tensor([0.1, 0.2, 0.9, 0.0, 0.3, 0.6, 0.1, 0.2])
    ret = torch.tensor([-0.5, -0.5, -0.1, -0.5, -0.5, -0.2, -0.5, -0.9])
    end = torch.ones(B, dtype=torch.bool)
    ep = torch.zeros(B, dtype=torch.bool)
    ep[5] = True
    assert agent.observe(_obs(), cand, _out(imm)) == {}
    assert agent.observe(_obs(), cand, _out(imm, ret, end, ep)) == {}
    torch.testing.assert_close(agent.scores(), (2 * 0.5 * imm + ret) / 2)  # mean per step so far
    info = agent.observe(_obs(), cand, _out(imm))
    assert info["cem_generation"] == 1.0
    torch.testing.assert_close(agent.mu, cand[[2, 5]].mean(0))
    torch.testing.assert_close(agent.sigma, cand[[2, 5]].std(0, unbiased=False))
    assert torch.equal(agent.act(_obs(), explore=False), agent.mu.expand(B, -1))
    new = agent.act(_obs(), explore=True)
    assert not torch.equal(new, cand)  # a fresh generation around the new mean


def test_smoothing_noise_floor_and_shared_population():
    agent = CEM(CEMConfig(population=4, steps_per_generation=1, elite_frac=0.5, smoothing=0.25, min_sigma=0.3,
                          immediate_weight=1.0, retention_weight=0.0, init_sigma=0.4), seed=0)
    a = agent.act(_obs(), explore=True)
    cand = agent.candidates.clone()
    assert torch.equal(a, cand[torch.arange(B) % 4])  # rows i and i + 4 share candidate i
    # Candidate scores (mean of its two rows): 0 -> 0.5, 1 -> 0.1, 2 -> 0.3, 3 -> 0.45; elite = {0, 3}.
    agent.observe(_obs(), a, _out([1.0, 0.2, 0.2, 0.5, 0.0, 0.0, 0.4, 0.4]))
    torch.testing.assert_close(agent.mu, 0.75 * cand[[0, 3]].mean(0))
    expect = (0.25 * 0.4 + 0.75 * cand[[0, 3]].std(0, unbiased=False)).clamp_min(0.3)
    torch.testing.assert_close(agent.sigma, expect)
    assert agent.sigma.min() >= 0.3


def test_observe_before_any_generation_is_ignored_and_bad_configs():
    agent = CEM(CEMConfig(), seed=0)
    assert agent.observe(_obs(), torch.zeros(B, 7), _out(torch.ones(B))) == {}  # a random warm-up step
    assert agent.candidates is None and torch.equal(agent.mu, torch.zeros(7))
    with pytest.raises(RetentionRLError, match="population 9 exceeds"):
        CEM(CEMConfig(population=9)).act(_obs(), explore=True)
    with pytest.raises(RetentionRLError, match="unknown key 'lr'"):
        cem.build(None, {"lr": 0.1}, 0)
    with pytest.raises(RetentionRLError, match="elite_frac"):
        cem.build(None, {"elite_frac": 0.0}, 0)
    with pytest.raises(RetentionRLError, match="init_mu"):
        cem.build(None, {"init_mu": [0.0] * 6}, 0)


def test_same_seed_same_search_and_different_seed_differs():
    cfg = {"steps_per_generation": 2, "elite_frac": 0.25}
    a, b, c = cem.build(None, cfg, 1), cem.build(None, cfg, 1), cem.build(None, cfg, 2)
    stream = _stream(9)
    acts_a, acts_b, acts_c = _run(a, stream), _run(b, stream), _run(c, stream)
    assert all(torch.equal(x, y) for x, y in zip(acts_a, acts_b))
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma) and a.generation == 4
    assert not torch.equal(acts_a[0], acts_c[0])


def test_state_dict_round_trip_continues_identically():
    cfg = {"steps_per_generation": 3, "population": 4}
    stream = _stream(14)
    ref = cem.build(None, cfg, 5)
    ref_actions = _run(ref, stream)
    first = cem.build(None, cfg, 5)
    _run(first, stream[:7])  # stop mid-generation (generation 2, step 1)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = cem.build(None, cfg, 99)  # the seed comes from the checkpoint
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rest = _run(resumed, stream[7:])
    assert all(torch.equal(x, y) for x, y in zip(rest, ref_actions[7:]))
    assert torch.equal(resumed.mu, ref.mu) and torch.equal(resumed.sigma, ref.sigma)
    assert resumed.generation == ref.generation
    assert torch.equal(resumed.gen.get_state(), ref.gen.get_state())


def test_cem_learns_the_sign_of_the_fusion_weights(tiny_sim, tmp_path, monkeypatch):
    """On the immediate reward, CEM's frozen mean beats the uniform [-1, 1]^7 policy (which often ranks the least
    clickable items first), as TD3 does in test_training.py."""
    from retentionrl.agents.base import Agent
    from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
    from retentionrl.training.online import TrainConfig, train

    ev = {"n_users": 16, "n_episodes": 16, "seeds": [101, 102]}

    class Uniform(Agent):
        gen = torch.Generator().manual_seed(0)

        def act(self, obs, explore=False):
            return torch.rand(obs.user.shape[0], 7, generator=self.gen) * 2 - 1

    cfg = TrainConfig(algo="cem", seed=3, n_users=16, total_steps=100, warmup_steps=0, log_every=10,
                      eval_every=100, checkpoint_every=100, env={"max_sessions": 2}, eval=ev,
                      agent={"steps_per_generation": 10, "elite_frac": 0.25,
                             "retention_weight": 0.0, "immediate_weight": 1.0})
    trained = train(cfg, tiny_sim, tmp_path / "cem", progress=False)
    base = evaluate_policy(Uniform(), tiny_sim, EvalConfig(preset="kuaisim", env_overrides={"max_sessions": 2}, **ev))
    assert trained["eval"]["click_rate"] > base["mean"]["click_rate"] + 0.05


def test_training_loop_resume_matches_uninterrupted(tiny_sim, tmp_path, monkeypatch):
    import json

    from retentionrl.training.online import TrainConfig, train

    cfg = TrainConfig(algo="cem", seed=1, n_users=8, total_steps=40, warmup_steps=0, log_every=10, eval_every=40,
                      checkpoint_every=10, env={"max_sessions": 2}, eval={"n_users": 8, "n_episodes": 8, "seeds": [7]},
                      agent={"steps_per_generation": 6, "population": 4, "immediate_weight": 1.0})
    full = train(cfg, tiny_sim, tmp_path / "full", progress=False)
    assert train(cfg, tiny_sim, tmp_path / "part", progress=False, stop_after=25) is None  # mid-generation
    resumed = train(cfg, tiny_sim, tmp_path / "part", resume=True, progress=False)
    records = lambda run: [{k: v for k, v in json.loads(x).items() if k != "time"}  # noqa: E731
                           for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records(tmp_path / "part") == records(tmp_path / "full")
    assert any("cem_generation" in r for r in records(tmp_path / "full"))
    assert resumed["eval"] == full["eval"]
