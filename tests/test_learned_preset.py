"""The learned preset's leave and return models see the same features at any slate size: the env's features at
slate K equal those computed from the same exposures laid out as a log; the per-exposure hazard composes
over a slate as over K requests of 1; a bundle fitted the old way is refused."""

from __future__ import annotations

import json

import pytest
import torch

from retentionrl.cli import main
from retentionrl.simulator.bundle import BundleError, Simulator
from retentionrl.simulator.leave import LearnedLeave, leave_features
from retentionrl.simulator.response import ResponseModel
from retentionrl.simulator.returns import session_features


@pytest.mark.parametrize("K", [1, 3])
def test_env_features_equal_the_log_layout_of_the_same_exposures(tiny_sim, monkeypatch, K):
    env = tiny_sim.make_env("learned", n_users=4, slate_size=K, users="test", max_sessions=100)
    seen_leave, seen_return = [], []
    leave_sample, return_dist = env.leave.sample, env.returns.distribution

    def record_leave(reward, features, generator):
        seen_leave.append(features.clone())
        return leave_sample(reward, features, generator)

    def record_return(users, session_reward, features):
        seen_return.append(features.clone())
        return return_dist(users, session_reward, features)

    monkeypatch.setattr(env.leave, "sample", record_leave)
    monkeypatch.setattr(env.returns, "distribution", record_return)
    obs = env.reset(seed=5)
    T = 8
    outs = [env.step(torch.ones(4, 7)) for _ in range(T)]
    assert not any(o.episode_end.any() for o in outs)

    # The log: each row's initial history, then its T * K exposures in order (one row per exposure).
    slate = torch.cat([o.slate for o in outs], 1)  # (B, T * K)
    resp = torch.cat([o.responses for o in outs], 1)  # (B, T * K, 7)
    watch = torch.cat([o.watch_time for o in outs], 1)
    model: ResponseModel = tiny_sim.response
    with torch.no_grad():
        states = model.states(
            obs.user, torch.cat([obs.hist_items, slate], 1),
            torch.cat([obs.hist_resp, ResponseModel.token_features(resp, watch)], 1),
            torch.cat([obs.hist_pad, torch.zeros_like(slate, dtype=torch.bool)], 1),
        )[:, 1 + obs.hist_items.shape[1]:]  # (B, T * K, D): the state after each new exposure
    ends = [e for o in outs for e in o.session_end.tolist()]  # flat (t, b)
    n_ends = 0
    for b in range(4):
        rank = 0  # exposures so far in the session, as build.py ranks log rows
        first = 0  # the session's first exposure
        index, prev_gap = 0, 0.0
        for t in range(T):
            rows = range(t * K, (t + 1) * K)
            pos = torch.tensor([rank + 1 + k for k in range(K)])
            want = leave_features(states[b, list(rows)], pos, resp[b, list(rows)])
            torch.testing.assert_close(seen_leave[t][b], want, atol=1e-4, rtol=1e-4)
            rank += K
            if ends[t * 4 + b]:
                last = (t + 1) * K
                want = session_features(
                    states[b, last - 1][None], torch.tensor([last - first]), resp[b, first:last].sum(0)[None],
                    watch[b, first:last].sum()[None], torch.tensor([index]), torch.tensor([prev_gap]),
                )
                got = seen_return[sum(int(o.session_end.sum()) > 0 for o in outs[:t])]
                row = int(outs[t].session_end[:b].sum())  # the env passes the ending rows in order
                torch.testing.assert_close(got[row : row + 1], want, atol=1e-4, rtol=1e-4)
                n_ends += 1
                rank, first, index, prev_gap = 0, last, index + 1, float(outs[t].return_day[b])
    assert n_ends >= 4  # every row's sessions ended at least once in T requests


def test_per_exposure_hazard_composes_over_a_slate_as_over_requests_of_one():
    # logit = relu(x): with x = logit(h) > 0 the per-exposure hazard is h exactly.
    leave = LearnedLeave(1, hidden=1)
    with torch.no_grad():
        for layer in (leave.net[0], leave.net[2]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    h = torch.tensor([0.6, 0.75, 0.9])
    x = torch.log(h / (1 - h))[:, None]  # (K, 1)
    with torch.no_grad():
        slate = leave.end_probability(x[None])  # one request of 3 items
        singles = leave.end_probability(x[:, None])  # three requests of 1: each ends with h_k
    assert float(slate) == pytest.approx(1 - 0.4 * 0.25 * 0.1, abs=1e-6)
    assert singles.tolist() == pytest.approx(h.tolist(), abs=1e-6)
    assert float(1 - torch.prod(1 - singles)) == pytest.approx(float(slate), abs=1e-6)


@pytest.mark.parametrize("unit", [None, "request"])
def test_a_bundle_not_fitted_per_exposure_is_refused(tiny_sim, tmp_path, capsys, unit):
    path = tiny_sim.save(tmp_path / "old")
    meta = json.loads((path / "meta.json").read_text())
    if unit is None:
        del meta["learned_unit"]  # bundles built before the unit was recorded
    else:
        meta["learned_unit"] = unit
    (path / "meta.json").write_text(json.dumps(meta))
    old = Simulator.load(path)
    with pytest.raises(BundleError, match="rebuild it with 'retentionrl simulator build'"):
        old.make_env("learned")
    with pytest.raises(BundleError, match="learned return model"):
        old.make_env("kuaisim", returns={"kind": "learned"})
    old.make_env("kuaisim").reset(0)  # the KuaiSim preset uses no learned part: still fine
    assert main(["simulator", "report", str(path), "--users", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rebuild" in err
    assert not (path / "report" / "calibration.json").exists()


def test_bundle_records_the_unit(tiny_sim):
    assert tiny_sim.meta["learned_unit"] == "exposure"
