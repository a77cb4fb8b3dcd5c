"""Calibration report: files, numbers, determinism of the logged-like policy, censoring emulation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from retentionrl.errors import RetentionRLError
from retentionrl.simulator.calibration import (
    LoggedLikePolicy,
    SimulatedSessions,
    calibration_report,
    compare,
    censor_mask,
    histogram,
    requests_histograms,
    item_popularity,
    simulate_logged_like,
)

SMALL = {"n_users": 48, "n_steps": 12}  # keeps the file well under its time budget


@pytest.fixture(scope="module")
def report(tiny_sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    return out, calibration_report(tiny_sim, out, preset="learned", seed=0, **SMALL)


def test_report_files_and_markdown(report, tiny_sim):
    out, res = report
    for name in ("calibration.md", "calibration.json", "return_day.png", "session_length.png", "behaviour_rates.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert (out / "return_day.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "calibration.md").read_text()
    assert "| behaviour | positives | model | popularity |" in md
    for b, v in tiny_sim.meta["auc"].items():
        assert f"| {b} | {v['positives']} |" in md
    assert f"| TV return day (raw) | {res['tv_return_day']:.4f} |" in md
    assert f"| TV return day (censoring-matched) | {res['tv_return_day_censored']:.4f} |" in md
    assert f"shorter than the slate of 6) | {res['tv_session_length']:.4f} |" in md
    assert f"| TV session length (requests of 6) | {res['tv_session_requests']:.4f} |" in md
    # The report runs at the benchmarks' slate of 6 by default, and says so.
    assert res["slate_size"] == res["comparison"]["slate_size"] == 6
    assert "- preset: `learned`, slate size 6," in md
    assert "held-out NLL" in md and "| leave |" in md and "| return |" in md
    on_disk = json.loads((out / "calibration.json").read_text())
    assert on_disk["tv_return_day"] == pytest.approx(res["tv_return_day"])
    assert on_disk["auc"] == tiny_sim.meta["auc"]


def test_report_numbers(report, tiny_sim):
    _, res = report
    c = res["comparison"]
    real = tiny_sim.meta["real"]
    D = tiny_sim.max_return_day
    assert c["n_sessions"] > 0 and c["n_unfinished"] == 0
    # The real side is the bundle's logs, untouched; the simulated side counts every admitted session once.
    assert c["return_day"]["real"] == real["return_day_hist"] and len(c["return_day"]["sim"]) == D
    assert c["session_length"]["real"] == real["session_length_hist"]
    assert {b: v["real"] for b, v in c["behaviour_rates"].items()} == real["behaviour_rates"]
    assert sum(c["return_day"]["sim"]) == sum(c["session_length"]["sim"]) == c["n_sessions"]
    assert sum(c["return_day"]["sim_censored"]) < c["n_sessions"]  # the logs' short windows hide some returns
    assert res["tv_return_day"] == c["tv_return_day"] and res["tv_session_length"] == c["tv_session_length"]


def _sessions(requests, days, behaviour_sums, slate_size=1, max_day=3):
    req = torch.tensor(requests)
    return SimulatedSessions(session_requests=req, session_exposures=req * slate_size,
                             return_days=torch.tensor(days), behaviour_sums=torch.tensor(behaviour_sums, dtype=torch.float),
                             n_exposures=int(req.sum()) * slate_size, n_unfinished=0, n_steps_run=4,
                             slate_size=slate_size, max_return_day=max_day)


def test_compare_by_hand():
    """Hand-made real logs and simulated sessions: every TV distance, mean and rate computed on paper."""
    real = {"return_day_hist": [6, 3, 1], "session_length_hist": [1, 1, 0, 2], "observed_days_hist": [0, 0, 0, 5],
            "behaviour_rates": {"click": 0.5, "like": 0.1}, "mean_session_length": 3.0, "mean_return_day": 1.7}
    sim = SimpleNamespace(meta={"real": real})
    # 4 sessions of 1, 2, 2, 4 requests (9 exposures) returning on days 1, 1, 2, 3; 3 clicks, 0 likes.
    stats = _sessions([1, 2, 2, 4], [1, 1, 2, 3], [3, 0, 0, 0, 0, 0, 0])
    c = compare(sim, stats)
    # Return day: sim (.5, .25, .25) vs real (.6, .3, .1): TV = (.1 + .05 + .15) / 2.
    assert c["return_day"]["sim"] == [2, 1, 1] and c["tv_return_day"] == pytest.approx(0.15)
    # Every window is 3 days >= D: nothing is censored.
    assert c["return_day"]["sim_censored"] == [2, 1, 1] and c["tv_return_day_censored"] == pytest.approx(0.15)
    # Session length in bins 1..4: sim (.25, .5, 0, .25) vs real (.25, .25, 0, .5): TV = (.25 + .25) / 2.
    assert c["session_length"]["sim"] == [1, 2, 0, 1] and c["tv_session_length"] == pytest.approx(0.25)
    assert c["mean_return_day"]["sim"] == pytest.approx(7 / 4) and c["mean_return_day"]["real"] == pytest.approx(1.5)
    assert c["mean_session_length"]["sim"] == pytest.approx(9 / 4)
    rates = c["behaviour_rates"]
    assert rates["click"] == {"real": 0.5, "sim": pytest.approx(1 / 3), "abs_diff": pytest.approx(1 / 6)}
    assert rates["like"]["abs_diff"] == pytest.approx(0.1)
    assert rates["hate"] == {"real": None, "sim": 0.0, "abs_diff": None}  # not in the logs: no difference
    # Windows of 1 day: only day-1 returns are observable: (1, 0, 0) vs (.6, .3, .1) -> TV = (.4 + .3 + .1) / 2.
    real["observed_days_hist"] = [0, 7]
    c = compare(sim, stats)
    assert c["return_day"]["sim_censored"] == [2, 0, 0] and c["tv_return_day_censored"] == pytest.approx(0.4)
    assert c["return_day"]["observed_share_sim"] == 0.5
    # Slates of 2: a session of r requests is 2r exposures (bins 2, 4, 4, >=4).
    c = compare(sim, _sessions([1, 2, 2, 4], [1, 1, 2, 3], [3, 0, 0, 0, 0, 0, 0], slate_size=2))
    assert c["session_length"]["sim"] == [0, 1, 0, 3] and c["tv_session_length"] == pytest.approx(0.25)


def test_kuaisim_preset_fixed_sessions(tiny_sim, tmp_path):
    # KuaiSim's temper leave gives exactly 5 requests per session: with slate 2 that is 10 exposures.
    s = simulate_logged_like(tiny_sim, "kuaisim", n_users=16, n_steps=6, seed=3, slate_size=2)
    assert len(s.session_requests) > 0
    assert (s.session_requests == 5).all() and (s.session_exposures == 10).all()
    assert s.n_exposures == 2 * int(s.session_requests.sum())
    # Return days drawn from the preset's law: with P = 0.4 for everyone, a geometric truncated to 1..D.
    s = simulate_logged_like(tiny_sim, "kuaisim", n_users=256, n_steps=6, seed=3, slate_size=2,
                             returns={"personal": "none", "feedback_influence": 0.0})
    p, q, D = 0.4, 0.6, tiny_sim.max_return_day
    assert len(s.return_days) == 512  # sessions starting at steps 0 and 5
    mean_day = sum(d * p * q ** (d - 1) for d in range(1, D + 1)) / (1 - q**D)
    assert float(s.return_days.float().mean()) == pytest.approx(mean_day, abs=0.3)  # standard error 0.08


def test_logged_like_is_deterministic(tiny_sim):
    a = simulate_logged_like(tiny_sim, "learned", seed=7, **SMALL)
    b = simulate_logged_like(tiny_sim, "learned", seed=7, **SMALL)
    c = simulate_logged_like(tiny_sim, "learned", seed=8, **SMALL)
    for field in ("session_requests", "return_days", "behaviour_sums"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.n_exposures == b.n_exposures
    assert not (torch.equal(a.session_requests, c.session_requests) and torch.equal(a.return_days, c.return_days))


def test_policy_samples_by_popularity(tiny_sim):
    N = tiny_sim.n_items
    pop = torch.zeros(N)
    pop[5] = 9 * N  # item 5 weighs 9N + 1 against N - 1 for all others together: ~90% of single-item slates
    obs = SimpleNamespace(candidates=torch.arange(N), user=torch.zeros(4000, dtype=torch.long))
    pick = LoggedLikePolicy(pop, seed=0)(obs).argmax(1)
    assert abs(float((pick == 5).float().mean()) - 0.9) < 0.03
    again = LoggedLikePolicy(pop, seed=0)(obs).argmax(1)
    assert torch.equal(pick, again)


def test_item_popularity_sources(tiny_sim):
    stored = tiny_sim.tensors["item_exposures"]
    assert torch.equal(item_popularity(tiny_sim), stored.float())
    explicit = torch.arange(tiny_sim.n_items)
    assert torch.equal(item_popularity(tiny_sim, explicit), explicit.float())
    bare = SimpleNamespace(n_items=7, tensors={})
    assert torch.equal(item_popularity(bare), torch.zeros(7))  # uniform fallback
    with pytest.raises(RetentionRLError):
        item_popularity(bare, torch.ones(3))


def test_censoring_known_answers():
    g = torch.Generator().manual_seed(0)
    days = torch.randint(1, 11, (5000,), generator=g)
    # Every window 0 days (sessions on the log's last day): no return is observable.
    assert not censor_mask(days, [100] + [0] * 60, g).any()
    # Every window >= D: everything is observed, censored == raw.
    assert censor_mask(days, [0] * 10 + [30] + [0] * 49 + [70], g).all()
    # Windows uniform on 0..5, all returns on day 3: observed iff c >= 3, i.e. half of them.
    share = censor_mask(torch.full((20000,), 3), [1] * 6, g).float().mean()
    assert abs(float(share) - 0.5) < 0.02
    with pytest.raises(RetentionRLError):
        censor_mask(days, [0, 0, 0], g)


def test_histogram_buckets():
    assert histogram(torch.tensor([1, 2, 2, 3, 7, 12]), 4) == [1, 2, 1, 2]
    assert histogram(torch.zeros(0, dtype=torch.long), 3) == [0, 0, 0]


def test_session_requests_on_the_slate_grid_by_hand():
    # Real exposures 1..5 and 5+ (last open bin), slate 2: ceil(l / 2) requests = 1, 1, 2, 2, 3+ (5+ -> 3+).
    real, sim = requests_histograms([10, 20, 30, 40, 50], torch.tensor([1, 2, 2, 3, 7]), 2)
    assert real == [30, 70, 50]
    assert sim == [1, 2, 2]
    real, _ = requests_histograms([10, 20, 30], torch.tensor([1]), 1)  # slate 1: the exposure histogram itself
    assert real == [10, 20, 30]


def test_report_at_slate_one_is_a_parameter(tiny_sim, tmp_path):
    res = calibration_report(tiny_sim, tmp_path, preset="learned", seed=0, slate_size=1, **SMALL)
    c = res["comparison"]
    assert res["slate_size"] == c["slate_size"] == 1
    assert c["real_share_shorter_than_slate"] == 0.0
    assert c["session_requests"] == c["session_length"]  # one request is one exposure
    assert "slate size 1," in (tmp_path / "calibration.md").read_text()
