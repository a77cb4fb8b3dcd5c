"""Agents: one file per method, all behind :class:`retentionrl.agents.base.Agent`.

Each method's module exposes ``build(sim, cfg: dict, seed, env: EnvConfig | None = None) -> Agent``; the registry
imports it lazily. ``env`` is the environment the agent will act in (None: the KuaiSim preset): the agent's state
features are scaled from it (:func:`~retentionrl.agents.base.agent_spec`), not from constants.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from retentionrl.agents.base import Agent, FixedWeightsAgent, GaussianBehaviour, RandomAgent
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import EnvConfig, preset

#: algorithm name -> "module:function" building it
AGENTS: dict[str, str] = {
    "td3": "retentionrl.agents.td3:build",
    "sac": "retentionrl.agents.sac:build",
    "ddpg": "retentionrl.agents.ddpg:build",
    "cem": "retentionrl.agents.cem:build",
    "din": "retentionrl.agents.din:build",
    "deepfm": "retentionrl.agents.deepfm:build",
    "bc": "retentionrl.agents.bc:build",
    "dqn": "retentionrl.agents.dqn:build",
    "rlur": "retentionrl.agents.rlur:build",
    "gfn4retention": "retentionrl.agents.gfn4retention:build",
    "sec": "retentionrl.agents.sec:build",
    "rliv_ua": "retentionrl.agents.rliv_ua:build",
    # offline RL from logs (training.OFFLINE_ALGOS)
    "resact": "retentionrl.agents.resact:build",
    "td3bc": "retentionrl.agents.td3bc:build",
    "iql": "retentionrl.agents.iql:build",
    "cql": "retentionrl.agents.cql:build",
    "cql_discrete": "retentionrl.agents.cql_discrete:build",
    "bcq": "retentionrl.agents.bcq:build",
    "il_cvae": "retentionrl.agents.il_cvae:build",
    "ranking": "retentionrl.agents.base:build_ranking",
    "random": "retentionrl.agents.base:build_random",
    "gaussian": "retentionrl.agents.base:build_gaussian",  # a stochastic logging policy with known propensities
}


def make_agent(name: str, sim, cfg: dict[str, Any] | None = None, seed: int = 0,
               env: EnvConfig | str = "kuaisim") -> Agent:
    """Build algorithm ``name`` for simulator ``sim`` with its config ``cfg`` (unknown keys are errors).

    ``env`` is the environment the agent will act in, an :class:`~retentionrl.simulator.env.EnvConfig` or a preset
    name: its slate size, ``max_sessions`` and ``max_return_day`` (None: the bundle's D) scale the agent's state
    features. The training loops and ``load_trained`` pass the run's env (preset + overrides); the default, the
    KuaiSim preset, is for direct callers that act in ``sim.make_env("kuaisim")``."""
    if name not in AGENTS:
        raise RetentionRLError(f"unknown algorithm '{name}' (known: {', '.join(AGENTS)})")
    if isinstance(env, str):
        env = preset(env)
    elif not isinstance(env, EnvConfig):
        raise RetentionRLError(f"make_agent: env must be an EnvConfig or a preset name, got {type(env).__name__}")
    module, func = AGENTS[name].split(":")
    return getattr(import_module(module), func)(sim, dict(cfg or {}), seed, env)


__all__ = ["AGENTS", "Agent", "FixedWeightsAgent", "GaussianBehaviour", "RandomAgent", "make_agent"]
