"""The bundle's bootstrap ensemble and the disagreement every evaluation reports: members saved and loaded,
identical members disagree by exactly 0, a hand-computed two-member case, never-logged items vs popular ones,
and the column in ``compare``."""

from __future__ import annotations

import copy

import pytest
import torch

from retentionrl.agents.base import Agent, FixedWeightsAgent
from retentionrl.bench.report import comparison_table
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.build import BuildConfig, EnsembleConfig, build_simulator
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.ensemble import CLICK, DisagreementTracker
from retentionrl.simulator.response import ResponseConfig, ResponseModel
from retentionrl.simulator.returns import session_features

SMALL_EVAL = {"n_users": 32, "n_episodes": 32, "seeds": [3]}


@pytest.fixture(scope="module")
def ens_sim(tmp_path_factory):
    cfg = BuildConfig(max_users=800, response=ResponseConfig(dim=16, epochs=1, window=8),
                      ensemble=EnsembleConfig(members=3, epochs=1, return_epochs=5))
    path = build_simulator(cfg, progress=False, log=lambda *_: None).save(tmp_path_factory.mktemp("ens") / "b")
    return Simulator.load(path)


def _with_members(sim: Simulator, members) -> Simulator:
    return Simulator(sim.response, sim.leave_model, sim.return_model, sim.tensors, sim.meta, sim.build_config, members)


def test_members_are_bootstrap_fits_saved_and_loaded(ens_sim, tmp_path):
    e = ens_sim.meta["ensemble"]
    assert e["members"] == len(ens_sim.members) == 3 and e["bootstrap"] == "users"
    assert len(e["auc"]) == 3 and all(a["click"] > 0.5 for a in e["auc"])  # each member still fits
    (r0, _), (r1, _) = ens_sim.members[:2]
    assert not torch.equal(r0.item_id.weight, r1.item_id.weight)  # own seed and resample
    again = Simulator.load(ens_sim.save(tmp_path / "b"))
    for (a, ra), (b, rb) in zip(ens_sim.members, again.members):
        for x, y in ((a, b), (ra, rb)):
            sx, sy = x.state_dict(), y.state_dict()
            assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)


def test_identical_members_disagree_exactly_zero(ens_sim):
    same = _with_members(ens_sim, [(ens_sim.response, ens_sim.return_model)] * 3)
    m = evaluate_policy(FixedWeightsAgent(), same, EvalConfig(preset="learned", **SMALL_EVAL))["mean"]
    assert m["disagreement_click"] == 0.0 and m["disagreement_return"] == 0.0
    assert m["disagreement_click_logged"] == 0.0 and m["disagreement_return_logged"] == 0.0
    # The bootstrap members do disagree on the same policy, and the simulation itself is unchanged.
    real = evaluate_policy(FixedWeightsAgent(), ens_sim, EvalConfig(preset="learned", **SMALL_EVAL))["mean"]
    assert real["disagreement_click"] > 0 and real["disagreement_return"] > 0
    assert real["return_time"] == m["return_time"] and real["click_rate"] == m["click_rate"]
    off = evaluate_policy(FixedWeightsAgent(), ens_sim, EvalConfig(preset="learned", disagreement=False, **SMALL_EVAL))
    assert not [k for k in off["mean"] if k.startswith("disagreement")] and off["mean"]["return_time"] == m["return_time"]


def test_two_members_by_hand(ens_sim):
    # Member 2 = the main models with +0.5 on the click logit and +1 on the day-1 return logit: the std of two
    # values is |a - b| / 2, so 0.25 on every shown item, and by hand over the session ends.
    resp2, ret2 = copy.deepcopy(ens_sim.response), copy.deepcopy(ens_sim.return_model)
    with torch.no_grad():
        resp2.out_bias[CLICK] += 0.5
        ret2.net[-1].bias[0] += 1.0
    sim = _with_members(ens_sim, [(ens_sim.response, ens_sim.return_model), (resp2, ret2)])
    env = sim.make_env("learned", n_users=8, users="test")
    obs = env.reset(seed=4)
    tracker = DisagreementTracker(sim, rows=8)
    tracker.reset(obs)
    main: ResponseModel = ens_sim.response
    with torch.no_grad():
        cache = main.init_cache(obs.user, obs.hist_items, obs.hist_resp, obs.hist_pad)
        out = env.step(torch.ones(8, 7))
        tracker.update(obs, out)
        main.extend(cache, out.slate, ResponseModel.token_features(out.responses, out.watch_time))
        e = out.session_end
        assert e.any()
        f = session_features(cache.state[e], torch.full((int(e.sum()),), env.K), out.responses[e].sum(1),
                             out.watch_time[e].sum(1), obs.session_index[e], obs.days_since_last[e])
        days = torch.arange(1, sim.max_return_day + 1, dtype=torch.float32)
        m1 = torch.softmax(ens_sim.return_model(f), -1) @ days
        m2 = torch.softmax(ret2(f), -1) @ days
        want_return = ((m1 - m2).abs() / 2).mean()
    got = tracker.result()
    assert got["disagreement_click"] == pytest.approx(0.25, rel=1e-5)
    assert got["disagreement_return"] == pytest.approx(float(want_return), rel=1e-4)


class _ByExposure(Agent):
    """Items mode: score candidates by +/- their logged exposure count (popular first, or never-logged first)."""

    action_mode = "items"

    def __init__(self, exposures: torch.Tensor, sign: float) -> None:
        self.score = sign * exposures.float()

    def act(self, obs, explore: bool = False):
        s = self.score[obs.candidates] + 1e-3 * torch.rand(len(obs.candidates))  # break ties among equals
        return s.expand(len(obs.user), -1).clone()


def test_disagreement_is_measured_on_the_items_the_policy_showed(ens_sim):
    # Member 2 differs from member 1 only on never-logged items (+1 on their click logit, as a member without
    # data there might): showing them costs exactly 1/2, showing logged-popular items exactly 0.
    exp = ens_sim.item_exposures
    unseen = exp == 0
    assert unseen.sum() > 100  # the small build leaves many items unseen
    resp2 = copy.deepcopy(ens_sim.response)
    with torch.no_grad():
        resp2.item_bias.weight[unseen, CLICK] += 1.0
    sim = _with_members(ens_sim, [(ens_sim.response, ens_sim.return_model), (resp2, ens_sim.return_model)])
    cfg = EvalConfig(preset="kuaisim", **SMALL_EVAL)
    popular = evaluate_policy(_ByExposure(exp, 1.0), sim, cfg)["mean"]
    never = evaluate_policy(_ByExposure(exp, -1.0), sim, cfg)["mean"]
    assert popular["disagreement_click"] == 0.0
    assert never["disagreement_click"] == pytest.approx(0.5, rel=1e-5)
    assert 0.0 < never["disagreement_click_logged"] < 0.5  # the logged-like policy shows some unseen items


def test_no_ensemble_no_figures(tiny_sim):
    assert tiny_sim.members == []
    m = evaluate_policy(FixedWeightsAgent(), tiny_sim, EvalConfig(**SMALL_EVAL))["mean"]
    assert not [k for k in m if k.startswith("disagreement")]


def test_compare_shows_the_disagreement_column(tmp_path):
    def run(rt, dc):
        return {"seed": 0, "eval": {"return_time": rt, "retention": 0.5, "click_rate": 0.5, "long_view_rate": 0.5,
                                    "like_rate": 0.1, "session_length": 5.0, "disagreement_click": dc,
                                    "disagreement_return": 0.2}, "train_seconds": 1.0, "dir": tmp_path}

    md, csv_text, _ = comparison_table({"a": [run(2.0, 0.05), run(2.1, 0.07)], "b": [run(2.5, 0.01), run(2.4, 0.03)]})
    assert "disagree. click" in md and "disagree. return" in md
    assert "disagreement_click_mean" in csv_text
    row = next(line for line in md.splitlines() if line.startswith("| b"))
    assert "0.020" in row  # b's mean click disagreement
    # Runs evaluated before the ensemble existed have no such key: the column is left out, not an error.
    old = {m: [{**r, "eval": {k: v for k, v in r["eval"].items() if not k.startswith("disagree")}} for r in rs]
           for m, rs in {"a": [run(2.0, 0.05), run(2.1, 0.07)]}.items()}
    assert "disagree" not in comparison_table(old)[0]
