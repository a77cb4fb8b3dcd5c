"""Measured leverage: the fixed policies' evaluations agree with the closed-form return-time range where one
exists, and measure the session-length range where only a policy-dependent leave model sets it."""

from __future__ import annotations

import pytest

from retentionrl.bench.leverage import bounds_markdown, measured_bounds, one_behaviour_policies
from retentionrl.evaluation.protocol import EvalConfig


def test_measured_bounds_lie_in_the_closed_form_range_and_session_length_moves_only_with_satisfaction(tiny_sim):
    assert len(one_behaviour_policies()) == 15
    ev = EvalConfig(preset="kuaisim", n_users=64, n_episodes=64, seeds=[5])
    fixed = measured_bounds(tiny_sim, ev)
    floor, ceiling = tiny_sim.return_time_range("kuaisim")
    rt = [m["return_time"] for m in fixed.values()]
    assert floor - 0.05 <= min(rt) and max(rt) <= ceiling + 0.05  # sampling noise of 64 episodes only
    assert {m["session_length"] for m in fixed.values()} == {5.0}  # the KuaiSim temper: 5 requests, whatever is shown
    sat = measured_bounds(tiny_sim, EvalConfig(preset="kuaisim", n_users=64, n_episodes=64, seeds=[5],
                                               env_overrides={"leave": {"kind": "satisfaction",
                                                                        "satisfaction_drop": 3.0}}))
    # A disappointing slate costs temper: showing the least-clicked items shortens sessions.
    assert sat["+click"]["session_length"] > sat["-click"]["session_length"] + 0.3
    md = bounds_markdown(sat, tiny_sim, "the satisfaction temper", metric="session_length")
    lo = min(sat, key=lambda k: sat[k]["session_length"])
    assert f"{sat[lo]['session_length']:.3f} ({lo}) to" in md and md.count("\n| ") == 15 + 1


def test_bounds_table_is_sorted_by_the_metric(tiny_sim):
    rows = {"a": {"return_time": 2.0, "retention": 0.1, "session_length": 5.0, "click_rate": 0.5},
            "b": {"return_time": 1.5, "retention": 0.2, "session_length": 4.0, "click_rate": 0.4}}
    md = bounds_markdown(rows, tiny_sim, "x")
    assert md.index("| b |") < md.index("| a |")
    assert "1.500 (b) to 2.000 (a)" in md
    assert "nan / nan" in md  # no ensemble in the bundle: said, not hidden
    with pytest.raises(KeyError):
        bounds_markdown({"a": {"return_time": 1.0}}, tiny_sim, "x")
