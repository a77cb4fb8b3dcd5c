"""Simulator: env semantics, determinism, return law, bundle round trip and bad input."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from retentionrl.data.schema import build_interactions
from retentionrl.data.sessions import sessionize
from retentionrl.simulator.bundle import BundleError, Simulator
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import ActionError
from retentionrl.simulator.returns import (
    censored_nll,
    fit_personal_term,
    truncated_geometric_mean,
    truncated_geometric_probs,
)


def rollout(env, steps: int, seed: int, action_seed: int = 1):
    env.reset(seed=seed)
    g = torch.Generator().manual_seed(action_seed)
    outs = []
    for _ in range(steps):
        outs.append(env.step(torch.rand(env.B, 7, generator=g)))
    return outs


def same(a, b) -> bool:
    return all(
        torch.equal(x.slate, y.slate) and torch.equal(x.responses, y.responses)
        and torch.equal(x.return_day, y.return_day) and torch.equal(x.obs.user, y.obs.user)
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("name", ["kuaisim", "learned"])
def test_same_seed_same_trajectory(tiny_sim, name):
    a = rollout(tiny_sim.make_env(name, n_users=8), 40, seed=3)
    b = rollout(tiny_sim.make_env(name, n_users=8), 40, seed=3)
    c = rollout(tiny_sim.make_env(name, n_users=8), 40, seed=4)
    assert same(a, b)
    assert not same(a, c)


@pytest.mark.parametrize("name", ["kuaisim", "learned"])
def test_env_state_round_trip_continues_identically(tiny_sim, tmp_path, name):
    env = tiny_sim.make_env(name, n_users=6)
    rollout(env, 7, seed=5)
    torch.save(env.state_dict(), tmp_path / "env.pt")
    g = torch.Generator().manual_seed(9)
    actions = [torch.rand(6, 7, generator=g) for _ in range(12)]
    first = [env.step(a) for a in actions]
    again = tiny_sim.make_env(name, n_users=6)
    again.load_state_dict(torch.load(tmp_path / "env.pt", weights_only=True))
    assert same(first, [again.step(a) for a in actions])


def test_step_shapes_and_semantics(tiny_sim):
    env = tiny_sim.make_env("kuaisim", n_users=5)
    obs = env.reset(seed=0)
    H, K = env.H, env.K
    assert obs.hist_items.shape == (5, H) and obs.hist_resp.shape == (5, H, 8) and obs.hist_pad.shape == (5, H)
    assert obs.candidates.shape == (tiny_sim.n_items,)
    assert torch.equal(obs.profile_cat, tiny_sim.response.user_cat[obs.user])
    assert torch.equal(obs.profile_num, tiny_sim.response.user_num[obs.user])
    out = env.step(torch.ones(5, 7))
    assert out.slate.shape == (5, K) and out.responses.shape == (5, K, 7) and out.watch_time.shape == (5, K)
    # The slate is appended to the history, newest last, with its responses.
    assert torch.equal(out.next_obs.hist_items[:, -K:], out.slate)
    assert torch.equal(out.next_obs.hist_resp[:, -K:, :7], out.responses)
    assert not out.next_obs.hist_pad[:, -K:].any()
    # No duplicate items inside a slate; immediate reward is the weighted mean of the slate's responses.
    assert all(len(set(row.tolist())) == K for row in out.slate)
    w = torch.tensor(tiny_sim.reward_weights)
    assert torch.allclose(out.reward, out.responses.mean(1) @ w)


@torch.no_grad()
def test_responses_are_drawn_with_the_response_models_probabilities(tiny_sim):
    """Each behaviour of each shown item is a Bernoulli draw of sigmoid(query . item + bias) for the user's state
    before the request: over 512 users x 6 items the mean draw matches the mean probability."""
    env = tiny_sim.make_env("kuaisim", n_users=512)
    env.reset(seed=0)
    q = env.model.queries(env._state)  # (B, 8, D), before the step changes the state
    out = env.step(torch.ones(512, 7))
    v = env.item_vecs[out.slate]  # (B, K, D)
    prob = torch.sigmoid(torch.einsum("bod,bkd->bko", q, v) + env.item_bias[out.slate])[..., :7]
    expected, drawn = prob.mean((0, 1)), out.responses.mean((0, 1))  # (7,) per behaviour
    assert float(expected[0]) > 0.1  # clicks are common enough for the check to bite
    # 3,072 draws per behaviour: standard error <= 0.009.
    assert torch.allclose(drawn, expected, atol=0.035), (drawn, expected)


@torch.no_grad()
def test_fusion_ranking_matches_naive_computation(tiny_sim):
    env = tiny_sim.make_env("kuaisim", n_users=4)
    env.reset(seed=0)
    a = torch.rand(4, 7, generator=torch.Generator().manual_seed(0))
    q = env.model.queries(env._state)
    naive = torch.einsum(
        "bk,bkn->bn", a, torch.sigmoid(torch.einsum("bkd,nd->bkn", q[:, :7], env.item_vecs) + env.item_bias[:, :7].T)
    )
    fast = env._fusion_scores(q[:, :7], a, env.obs.candidates)
    assert torch.allclose(fast, naive, atol=1e-5)
    out = env.step(a)
    assert torch.equal(out.slate.sort(1).values, torch.topk(naive, env.K, 1).indices.sort(1).values)


def test_session_and_episode_flags_kuaisim(tiny_sim):
    """Temper 5 => every session is exactly 5 requests; the episode ends after max_sessions sessions."""
    env = tiny_sim.make_env("kuaisim", n_users=6, max_sessions=3)
    outs = rollout(env, 16, seed=0)
    for t, out in enumerate(outs, start=1):
        assert bool(out.session_end.all()) == (t % 5 == 0) and bool(out.session_end.any()) == (t % 5 == 0)
        assert ((out.return_day > 0) == out.session_end).all()
        assert torch.allclose(out.retention_reward, -out.return_day.float() / 10)
        assert bool(out.episode_end.all()) == (t == 15)
    end = outs[14]
    assert (end.next_obs.session_index == 3).all()  # true successor
    assert (end.obs.session_index == 0).all() and (end.obs.step_in_session == 0).all()  # refilled rows
    assert (outs[4].next_obs.days_since_last == outs[4].return_day.float()).all()
    assert (outs[5].obs.step_in_session == 1).all()
    # session_reward: the running sum of the immediate reward within each session (restarts after an end)
    assert torch.allclose(outs[4].session_reward, sum(o.reward for o in outs[:5]), atol=1e-5)
    assert torch.allclose(outs[6].session_reward, outs[5].reward + outs[6].reward, atol=1e-5)


@pytest.mark.parametrize(("bias", "kappa", "shares"), [
    (0.999, 0.0, {1: 1.0}),  # P clipped to 1 - 1e-3: everyone is back the next day
    (1e-6, 0.0, {d: 0.1 for d in range(1, 11)}),  # P clipped to 1e-3: nearly uniform on 1..10
    (0.0, 10.0, {1: 1.0}),  # P = kappa * session reward >= 1 for every click-heavy session
])
def test_return_days_follow_the_geometric_law(tiny_sim, bias, kappa, shares):
    """The KuaiSim return law at its limits, where the share of each return day is known."""
    env = tiny_sim.make_env("kuaisim", n_users=400, max_sessions=2,
                            returns={"personal": "none", "bias": bias, "feedback_influence": kappa})
    days = torch.cat([o.return_day[o.session_end] for o in rollout(env, 5, seed=0)])
    assert len(days) == 400 and env.cfg.max_return_day == 10
    got = torch.bincount(days, minlength=11)[1:].double() / len(days)
    want = torch.tensor([shares.get(d, 0.0) for d in range(1, 11)], dtype=torch.float64)
    assert torch.allclose(got, want, atol=0.06), got  # 400 draws: standard error <= 0.025 per day


def test_inverse_day_reward_and_sampled_candidates(tiny_sim):
    env = tiny_sim.make_env("kuaisim", n_users=4, retention_reward="inverse_day", candidates=50)
    outs = rollout(env, 5, seed=1)
    assert torch.allclose(outs[-1].retention_reward, 1.0 / outs[-1].return_day.float())
    first, second = outs[0].obs.candidates, outs[1].obs.candidates
    assert first.shape == (50,) and not torch.equal(first, second)
    assert all(bool(torch.isin(o.slate, c).all()) for o, c in zip(outs[1:], [o.obs.candidates for o in outs[:-1]]))


def test_items_mode_shows_the_top_scored_items(tiny_sim):
    env = tiny_sim.make_env("kuaisim", n_users=3, action_mode="items")
    obs = env.reset(seed=0)
    scores = torch.zeros(3, len(obs.candidates))
    scores[:, [7, 3, 11, 2, 5, 13]] = torch.tensor([6.0, 5, 4, 3, 2, 1])
    out = env.step(scores)
    assert out.slate.tolist() == [[7, 3, 11, 2, 5, 13]] * 3


def test_bad_actions_are_clear_errors(tiny_sim):
    env = tiny_sim.make_env("kuaisim", n_users=4)
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"shape \(4, 7\).*got \(4, 6\)"):
        env.step(torch.ones(4, 6))
    with pytest.raises(ActionError, match=r"shape \(4, 7\).*got \(7,\)"):
        env.step(torch.ones(7))  # never silently broadcast
    bad = torch.ones(4, 7)
    bad[2, 5] = float("nan")
    with pytest.raises(ActionError, match="NaN or infinite value at row 2, column 5"):
        env.step(bad)
    with pytest.raises(ActionError, match="must be a numeric"):
        env.step([["a"] * 7] * 4)


def test_satisfaction_leave_keeps_satisfied_users_longer(tiny_sim):
    def mean_session_length(action_sign: float) -> float:
        env = tiny_sim.make_env("kuaisim", n_users=64, leave={"kind": "satisfaction", "satisfaction_drop": 3.0})
        env.reset(seed=0)
        steps = ends = 0
        for _ in range(30):
            out = env.step(torch.full((64, 7), action_sign) * torch.tensor([1.0, 1, 1, 1, 1, 1, -1]))
            steps += 64
            ends += int(out.session_end.sum())
        return steps / max(ends, 1)

    assert mean_session_length(1.0) > mean_session_length(-1.0)


def test_satisfaction_gain_lengthens_good_sessions_by_hand():
    """Temper 5, r_ref 1, drop 2, gain 0.5: a request of reward 2 (rel +1) costs 1 - 0.5 = 0.5, of reward 0.5
    (rel -0.5) 1 + 2 * 0.5 = 2, of reward 1.5 (rel +0.5) 0.75; the session ends once temper < 1, or at the cap."""
    from retentionrl.simulator.leave import TemperLeave

    leave = TemperLeave(3, 5.0, drop=2.0, reference_reward=1.0, gain=0.5, max_requests=6)
    g = torch.Generator()
    ends = [leave.sample(torch.tensor([2.0, 0.5, 1.5]), None, g).tolist() for _ in range(6)]
    # row 0: 4.5, 4, 3.5, 3, 2.5, 2 -> only the cap (6 requests) ends it; row 1: 3, 1, -1 -> ends at request 3;
    # row 2: 4.25, 3.5, 2.75, 2, 1.25, 0.5 -> ends at request 6 (temper and cap together)
    assert [e[0] for e in ends] == [False] * 5 + [True]
    assert [e[1] for e in ends][:3] == [False, False, True]
    assert [e[2] for e in ends] == [False] * 5 + [True]
    assert torch.allclose(leave.temper, torch.tensor([2.0, -7.0, 0.5]))
    leave.reset(torch.tensor([True, False, False]))
    assert leave.temper[0] == 5.0 and leave.requests.tolist() == [0, 6, 6]


def test_truncated_geometric_mean_closed_form():
    p = torch.tensor([0.05, 0.2, 0.4, 0.7, 0.999], dtype=torch.float64)
    D = 10
    probs = truncated_geometric_probs(p, D)
    days = torch.arange(1, D + 1, dtype=torch.float64)
    assert torch.allclose(probs.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(probs @ days, truncated_geometric_mean(p, D))
    # By hand for p = 0.4, D = 10: (1/p) - D q^D / (1 - q^D), q = 0.6.
    q = 0.6**10
    assert float(truncated_geometric_mean(torch.tensor([0.4], dtype=torch.float64), D)) == pytest.approx(1 / 0.4 - 10 * q / (1 - q))
    # And sampling through the environment's draw agrees with the closed form.
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(probs[2:3].float().expand(200_000, -1), 1, generator=g).squeeze(1) + 1
    assert float(draws.double().mean()) == pytest.approx(float(truncated_geometric_mean(p[2:3], D)), abs=0.02)


def test_censored_nll_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # observed gap 2 -> -log 0.3; censored after 1 day -> -log(0.3 + 0.2); censored after >= D -> -log 0.2
    assert float(censored_nll(logits, torch.tensor([2]), torch.tensor([False]), torch.tensor([0]))) == pytest.approx(-math.log(0.3))
    assert float(censored_nll(logits, torch.tensor([1]), torch.tensor([True]), torch.tensor([1]))) == pytest.approx(-math.log(0.5))
    assert float(censored_nll(logits, torch.tensor([1]), torch.tensor([True]), torch.tensor([7]))) == pytest.approx(-math.log(0.2))
    # A gap beyond D falls in the last class.
    assert float(censored_nll(logits, torch.tensor([9]), torch.tensor([False]), torch.tensor([0]))) == pytest.approx(-math.log(0.2))


def test_personal_term_by_hand():
    """User 0 returns every day (gaps 1,1; censored 0 days); user 1 once after 4 days then 5 days censored."""
    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 4)]
    f = pd.DataFrame(rows, columns=["user_id", "day"])
    f["timestamp"] = f["day"] * 86400.0
    f["item_id"] = 0
    d = build_interactions("toy", f, behaviours=("click",))
    s = sessionize(d, "day")
    # Log ends on day 4. user 0: n=2, fails = 0 + 0 + (4-2)=2 ; user 1: n=1, fails = 3 + 0 = 3.
    p_pop = 3 / (3 + 5)
    a, b = 2 * p_pop, 2 * (1 - p_pop)
    p0 = (2 + a) / (2 + 2 + a + b)
    p1 = (1 + a) / (1 + 3 + a + b)
    personal = fit_personal_term(s, 2, prior_strength=2.0)
    assert personal.tolist() == pytest.approx([p0 - (p0 + p1) / 2, p1 - (p0 + p1) / 2], abs=1e-6)


def test_bundle_round_trip(tiny_sim, tmp_path):
    path = tiny_sim.save(tmp_path / "b")
    again = Simulator.load(path)
    for k, v in tiny_sim.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert again.meta == json.loads(json.dumps(tiny_sim.meta))
    assert same(rollout(tiny_sim.make_env("learned", n_users=4), 12, 0), rollout(again.make_env("learned", n_users=4), 12, 0))
    # Overwriting an existing bundle is atomic and leaves no temporary folders behind.
    tiny_sim.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_bundle_meta_holds_auc_and_fits(tiny_sim):
    m = tiny_sim.meta
    assert {"click", "long_view"} <= set(m["auc"])
    assert m["auc"]["click"]["positives"] > 100 and m["auc"]["click"]["model"] is not None
    # The fitted leave and return models beat the best constant on held-out sessions (the builds' point).
    assert m["return_fit"]["heldout_nll"] < m["return_fit"]["constant_nll"]
    assert m["leave_fit"]["heldout_nll"] < m["leave_fit"]["constant_nll"]
    assert len(m["reward_weights"]) == 7 and m["reward_weights"][6] <= 0  # hate is penalised


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "weights.pt").unlink(), "bundle file 'weights.pt' is missing"),
        (lambda p: (p / "weights.pt").write_bytes(b"not a torch file"), "weights.pt: cannot read weights"),
        (lambda p: (p / "meta.json").write_text("{"), "corrupt bundle metadata"),
        (lambda p: _edit_meta(p, format_version=99), "unsupported bundle format 99"),
        (lambda p: _edit_meta(p, n_items=12), "weights do not match"),
        (lambda p: _edit_meta(p, user_cardinalities=[3]), "weights do not match"),
    ],
)
def test_corrupt_or_mismatched_bundle(tiny_sim, tmp_path, damage, message):
    path = tiny_sim.save(tmp_path / "b")
    damage(path)
    with pytest.raises(BundleError, match=message):
        Simulator.load(path)


def _edit_meta(path, **kw):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(kw)
    (path / "meta.json").write_text(json.dumps(meta))


def test_missing_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match="not a simulator bundle"):
        Simulator.load(tmp_path / "none")


def test_unknown_preset_and_config_key(tiny_sim):
    from retentionrl.errors import RetentionRLError

    with pytest.raises(RetentionRLError, match="unknown simulator preset 'kuaisimm'"):
        tiny_sim.make_env("kuaisimm")
    with pytest.raises(RetentionRLError, match="unknown key 'max_session'"):
        tiny_sim.make_env("kuaisim", max_session=3)


def test_build_cli_on_shipped_sample(tmp_path, capsys):
    """The whole build path through the CLI, small enough for CI."""
    from retentionrl.cli import main

    out = tmp_path / "bundle"
    assert main(["simulator", "build", "--max-users", "400", "--epochs", "1", "--members", "1", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "inputs.json", "meta.json", "weights.pt"]
    assert main(["simulator", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model AUC" in text and "400 users" in text
    sim = Simulator.load(out)
    assert sim.n_users == 400 and sim.build_config["max_users"] == 400
    assert len(sim.members) == sim.meta["ensemble"]["members"] == sim.build_config["ensemble"]["members"] == 1


def test_build_missing_dataset_files(tmp_path, capsys):
    from retentionrl.cli import main

    assert main(["simulator", "build", "--dataset", "ml-1m", "--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "ratings.dat" in capsys.readouterr().err


def test_random_state_personal_term_depends_on_the_state_with_the_fitted_spread(tiny_sim):
    """KuaiSim-like ablation: P = bias + state @ w + kappa * r, with a seeded random w scaled so that the term's
    spread over users' initial states equals the fitted per-user term's."""
    from retentionrl.simulator.env import preset

    cfg = preset("kuaisim", returns={"personal": "random_state", "state_seed": 3})
    ret = tiny_sim.make_returns(cfg)
    assert ret.personal is None and torch.equal(ret.state_weights, tiny_sim.make_returns(cfg).state_weights)
    users = torch.arange(min(512, tiny_sim.n_users))
    state = tiny_sim.response.init_cache(users, tiny_sim.init_items[users], tiny_sim.init_resp[users],
                                         tiny_sim.init_pad[users]).state
    term = (state @ ret.state_weights).detach()
    assert float(term.std()) == pytest.approx(float(tiny_sim.personal.std()), rel=0.25)
    r = torch.zeros(len(users))
    expect = (0.4 + term).clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(ret.probability(users, r, state), expect, atol=1e-6)
    env = tiny_sim.make_env("kuaisim", n_users=4, returns={"personal": "random_state"})
    env.reset(seed=0)
    for _ in range(5):
        out = env.step(torch.rand(4, 7))
    assert out.session_end.all() and (out.return_day > 0).all()
    with pytest.raises(RetentionRLError, match="random_state"):
        tiny_sim.return_time_range(cfg)
