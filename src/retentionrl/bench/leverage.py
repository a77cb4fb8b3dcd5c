"""Measured leverage of a simulator: how far fixed policies move a metric, when no closed form exists.

Where the return law is geometric with a per-user term, :meth:`Simulator.return_time_range` gives the exact
range of return time any policy can reach. Elsewhere (the learned return model, a leave model the policy can
influence: session length under the satisfaction temper or the learned leave model) the range is measured: the
frozen evaluation of every one-behaviour fusion policy (+/- each of the 7 weights), click-ranking and random
under the table's protocol. The spread of their values is a *lower bound* on the range any policy can reach —
what a reader needs beside a table to tell "the methods tie" from "the simulator lets nothing move".
"""

from __future__ import annotations

from typing import Any

from retentionrl.agents.base import Agent, FixedWeightsAgent, RandomAgent
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.bundle import Simulator


def one_behaviour_policies() -> dict[str, Agent]:
    """``+click``, ``-click``, ... (one fusion weight ±1, the others 0), ``ranking`` (click only) and ``random``."""
    policies: dict[str, Agent] = {f"{sign}{b}": FixedWeightsAgent([(1.0 if sign == "+" else -1.0) * (j == i)
                                                                   for j in range(len(BEHAVIOURS))])
                                  for i, b in enumerate(BEHAVIOURS) for sign in "+-"}
    policies["random"] = RandomAgent(seed=0)
    return policies


def measured_bounds(sim: Simulator, ev: EvalConfig) -> dict[str, dict[str, Any]]:
    """policy name -> the mean metrics of its frozen evaluation under ``ev`` (:func:`one_behaviour_policies`)."""
    return {name: evaluate_policy(agent, sim, ev)["mean"] for name, agent in one_behaviour_policies().items()}


def bounds_markdown(rows: dict[str, dict[str, Any]], sim: Simulator, what: str, metric: str = "return_time",
                    columns: tuple[str, ...] = ("return_time", "retention", "session_length", "click_rate")) -> str:
    """A table of ``rows`` sorted by ``metric`` and the spread line (min to max of ``metric``)."""
    lines = [f"Measured leverage of {what} (bundle `{sim.short_fingerprint}`, same protocol): the 14 one-behaviour "
             "fusion policies and random, frozen.", "",
             "| policy | " + " | ".join(c.replace("_", " ") for c in columns) + " | disagreement (click / return) |",
             "|---|" + "---|" * (len(columns) + 1)]
    for name, m in sorted(rows.items(), key=lambda kv: kv[1][metric]):
        dis = f"{m.get('disagreement_click', float('nan')):.3f} / {m.get('disagreement_return', float('nan')):.3f}"
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in columns) + f" | {dis} |")
    lo = min(rows, key=lambda k: rows[k][metric])
    hi = max(rows, key=lambda k: rows[k][metric])
    lines += ["", f"Spread of {metric.replace('_', ' ')}: {rows[lo][metric]:.3f} ({lo}) to {rows[hi][metric]:.3f} "
                  f"({hi}), a lower bound on what any policy can reach here.", ""]
    return "\n".join(lines)
