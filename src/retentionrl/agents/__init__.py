"""Agents: one file per method, all behind :class:`retentionrl.agents.base.Agent`."""

from __future__ import annotations

from typing import Any, Callable

from retentionrl.agents.base import Agent, FixedWeightsAgent, RandomAgent
from retentionrl.errors import RetentionRLError


def _td3(sim, cfg: dict[str, Any], seed: int) -> Agent:
    from retentionrl.agents.td3 import TD3, TD3Config
    from retentionrl.nets.actor_critic import AgentSpec
    from retentionrl.config import from_dict

    return TD3(AgentSpec.from_simulator(sim), from_dict(TD3Config, cfg, "agent"), seed=seed)


def _fixed(sim, cfg: dict[str, Any], seed: int) -> Agent:
    unknown = sorted(set(cfg) - {"weights"})
    if unknown:
        raise RetentionRLError(f"agent: unknown key '{unknown[0]}' (allowed: weights)")
    return FixedWeightsAgent(cfg.get("weights"))


def _random(sim, cfg: dict[str, Any], seed: int) -> Agent:
    if cfg:
        raise RetentionRLError(f"agent: unknown key '{sorted(cfg)[0]}' (random takes no options)")
    return RandomAgent(seed=seed)


AGENTS: dict[str, Callable[[Any, dict[str, Any], int], Agent]] = {
    "td3": _td3,
    "ranking": _fixed,
    "random": _random,
}


def make_agent(name: str, sim, cfg: dict[str, Any] | None = None, seed: int = 0) -> Agent:
    if name not in AGENTS:
        raise RetentionRLError(f"unknown algorithm '{name}' (known: {', '.join(AGENTS)})")
    return AGENTS[name](sim, dict(cfg or {}), seed)
