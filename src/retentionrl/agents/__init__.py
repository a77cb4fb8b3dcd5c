"""Agents: one file per method, all behind :class:`retentionrl.agents.base.Agent`.

Each method's module exposes ``build(sim, cfg: dict, seed) -> Agent``; the registry imports it lazily so that
``retentionrl --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from retentionrl.agents.base import Agent, FixedWeightsAgent, RandomAgent
from retentionrl.errors import RetentionRLError

#: algorithm name -> "module:function" building it
AGENTS: dict[str, str] = {
    "td3": "retentionrl.agents.td3:build",
    "sac": "retentionrl.agents.sac:build",
    "ddpg": "retentionrl.agents.ddpg:build",
    "cem": "retentionrl.agents.cem:build",
    "din": "retentionrl.agents.din:build",
    "bc": "retentionrl.agents.bc:build",
    "dqn": "retentionrl.agents.dqn:build",
    "rlur": "retentionrl.agents.rlur:build",
    "gfn4retention": "retentionrl.agents.gfn4retention:build",
    "ranking": "retentionrl.agents.base:build_ranking",
    "random": "retentionrl.agents.base:build_random",
}


def make_agent(name: str, sim, cfg: dict[str, Any] | None = None, seed: int = 0) -> Agent:
    if name not in AGENTS:
        raise RetentionRLError(f"unknown algorithm '{name}' (known: {', '.join(AGENTS)})")
    module, func = AGENTS[name].split(":")
    return getattr(import_module(module), func)(sim, dict(cfg or {}), seed)


__all__ = ["AGENTS", "Agent", "FixedWeightsAgent", "RandomAgent", "make_agent"]
