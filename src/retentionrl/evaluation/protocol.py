"""The evaluation protocol of design §4: a frozen, deterministic policy on fresh simulated users, fixed seeds.

:func:`evaluate_policy` runs one environment per evaluation seed until ``n_episodes`` user episodes have been
completed, feeding every step into :class:`~retentionrl.evaluation.metrics.RetentionMetrics`, and returns the
metrics per seed and their mean over seeds. Across training seeds the per-run results are then compared with
:mod:`retentionrl.evaluation.stats` (mean ± 95% CI, Welch's t-test).

:func:`last_episodes_average` is the papers' second protocol: the average of a metric over the last N training
episodes.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.metrics import RetentionMetrics
from retentionrl.simulator.ensemble import DisagreementTracker, logged_like_disagreement

if TYPE_CHECKING:
    from retentionrl.agents.base import Agent
    from retentionrl.simulator.bundle import Simulator

# The protocol sets these env fields itself; an override would silently break the protocol.
_RESERVED = ("n_users", "users", "action_mode")
# Offset between an eval seed and the global torch seed set for the agent, so the agent's stream is not a copy
# of the environment's (both would be Mersenne Twisters seeded alike).
_AGENT_SEED_OFFSET = 7_919


class EvaluationError(RetentionRLError):
    """A bad evaluation config, or an evaluation that could not finish."""


@dataclass
class EvalConfig:
    preset: str = "kuaisim"
    n_users: int = 256  # users simulated in parallel (rows of the batched env)
    n_episodes: int = 512  # completed user episodes to collect per seed
    seeds: list[int] = field(default_factory=lambda: [10_000, 10_001, 10_002])  # one env run per seed
    users: Literal["all", "train", "test"] = "test"  # the bundle's held-out users by default
    env_overrides: dict[str, Any] = field(default_factory=dict)  # EnvConfig fields on top of the preset
    max_steps: int = 10_000  # safety cap on env steps per seed
    # Ensemble disagreement on the visited states (bundles with an ensemble). It follows 64 rows with every
    # member (+15% to +100% evaluation time, docs/simulator.md); False skips it (e.g. frequent training evals).
    disagreement: bool = True

    def validate(self) -> None:
        for name in ("n_users", "n_episodes", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EvaluationError(f"eval config: {name} must be a positive integer, got {v!r}")
        if not self.seeds:
            raise EvaluationError("eval config: seeds is empty (need at least one evaluation seed)")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise EvaluationError(f"eval config: seeds must be integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            # A repeated seed replays the same users and would count one run twice in the mean.
            raise EvaluationError(f"eval config: seeds must be distinct, got {self.seeds!r}")
        if not isinstance(self.disagreement, bool):
            raise EvaluationError(f"eval config: disagreement must be true or false, got {self.disagreement!r}")
        if self.users not in ("all", "train", "test"):
            raise EvaluationError(f"eval config: users must be 'all', 'train' or 'test', got {self.users!r}")
        clash = [k for k in _RESERVED if k in self.env_overrides]
        if clash:
            raise EvaluationError(
                f"eval config: env_overrides may not set '{clash[0]}' (the protocol sets n_users and users from the "
                "eval config and action_mode from the agent)"
            )


def evaluate_policy(agent: "Agent", sim: "Simulator", cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate ``agent`` (frozen: ``act(obs, explore=False)`` under ``no_grad``) on ``sim`` with ``cfg``.

    Per seed: ``env = sim.make_env(cfg.preset, n_users, users, action_mode=agent.action_mode, **env_overrides)``,
    ``obs = env.reset(seed)``, then step with the agent's (B, 7) or (B, C) actions until at least
    ``n_episodes`` user episodes have completed (rows finish together, so the count can overshoot; the
    metrics' ``episodes`` entry is the exact number). Session- and slate-level metrics also include the
    sessions of episodes still running at the stop; episode-level ones count completed episodes only.

    Where the simulator extrapolates: with a bundle that has an ensemble, the metrics include
    ``disagreement_click`` / ``disagreement_return`` (std across the bootstrap members on what the policy
    visited, first 64 rows; :mod:`retentionrl.simulator.ensemble`) and the same figures for the logged-like
    policy in the same env config, ``disagreement_click_logged`` / ``disagreement_return_logged`` (computed once
    per bundle and config); a bundle without an ensemble (or ``cfg.disagreement = False``) reports none of them.

    Reproducibility: the environment draws everything (users, responses, return days) from its own generator,
    seeded by ``reset``, so for a given seed the users do not depend on how the agent uses randomness (with the
    fixed-length ``kuaisim`` leave model, every agent meets exactly the same users in the same rows). The
    global torch RNG is seeded from the eval seed inside ``torch.random.fork_rng`` so an agent that draws from
    it is reproducible too, and the caller's (e.g. a training loop's) global RNG stream is left untouched.
    An agent's *own* generators (e.g. ``RandomAgent.gen``) are the agent's business.

    Returns ``{"per_seed": [{"seed", "metrics", "steps", "wall_time"}], "mean": {metric: mean over seeds},
    "steps": total steps, "wall_time": total seconds, "action_mode", "config": asdict(cfg)}``. A metric that is
    undefined (``None``) for any seed is ``None`` in ``mean``. Raises :class:`EvaluationError` if a seed hits
    ``max_steps`` before collecting ``n_episodes`` episodes.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    mode = getattr(agent, "action_mode", "fusion")
    per_seed = []
    t_all = time.perf_counter()
    track = bool(sim.members) and cfg.disagreement
    reference = {}
    if track:
        with torch.random.fork_rng(devices=[]):
            ref = logged_like_disagreement(sim, cfg.preset, cfg.env_overrides, cfg.users, seed=cfg.seeds[0])
        reference = {f"{k}_logged": v for k, v in ref.items()}
    for seed in cfg.seeds:
        env = sim.make_env(cfg.preset, n_users=cfg.n_users, users=cfg.users, action_mode=mode, **cfg.env_overrides)
        metrics = RetentionMetrics(cfg.n_users, sim.item_tag, sim.item_author, BEHAVIOURS)
        tracker = DisagreementTracker(sim) if track else None
        t0 = time.perf_counter()
        steps = done = 0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + _AGENT_SEED_OFFSET)
            obs = env.reset(seed)
            if tracker is not None:
                tracker.reset(obs)
            while done < cfg.n_episodes:
                if steps >= cfg.max_steps:
                    raise EvaluationError(
                        f"evaluation seed {seed} hit the max_steps cap ({cfg.max_steps} env steps) after completing "
                        f"{done} of {cfg.n_episodes} user episodes; raise max_steps or n_users, or lower n_episodes "
                        f"(one episode is max_sessions sessions of requests)"
                    )
                out = env.step(agent.act(obs, explore=False))
                metrics.update(out)
                if tracker is not None:
                    tracker.update(obs, out)
                done += int(out.episode_end.sum())
                obs = out.obs
                steps += 1
        disagreement = tracker.result() if tracker is not None else {}
        per_seed.append({"seed": seed, "metrics": {**metrics.result(), **disagreement, **reference}, "steps": steps,
                         "wall_time": time.perf_counter() - t0})
    return {
        "per_seed": per_seed,
        "mean": _mean_over_seeds([r["metrics"] for r in per_seed]),
        "steps": sum(r["steps"] for r in per_seed),
        "wall_time": time.perf_counter() - t_all,
        "action_mode": mode,
        "config": asdict(cfg),
    }


def _mean_over_seeds(results: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Key-wise mean of metric dicts; ``None`` if the metric is undefined for any seed."""
    out: dict[str, float | None] = {}
    for key in results[0]:
        vals = [r[key] for r in results]
        out[key] = None if any(v is None for v in vals) else math.fsum(vals) / len(vals)
    return out


def last_episodes_average(history: Sequence[dict[str, Any]], n: int, key: str) -> float:
    """Mean of ``history[i][key]`` over the last ``n`` entries (one metric dict per training episode, oldest first).

    Raises ``ValueError`` when fewer than ``n`` episodes were logged, or when a value among the last ``n`` is
    missing, ``None`` or not finite: averaging fewer episodes than asked would silently change the protocol.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if len(history) < n:
        raise ValueError(f"need the last {n} episodes, but only {len(history)} were logged")
    start = len(history) - n
    vals = []
    for i, h in enumerate(history[start:], start):
        if key not in h:
            raise ValueError(f"episode {i} has no '{key}' (has: {', '.join(sorted(h)) or 'nothing'})")
        v = h[key]
        if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # 0-d tensor / array
            v = v.item()
        if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"episode {i}: '{key}' is {v!r}, not a finite number")
        vals.append(float(v))
    return math.fsum(vals) / n
