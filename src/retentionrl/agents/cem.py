"""CEM: the cross-entropy method over the 7 fusion weights (a state-independent policy).

The CEM baseline of the GFN4Retention / RLUR papers: one weight vector for every user and request, searched by
black-box optimisation on the simulator. The search distribution is a diagonal Gaussian ``N(mu, diag(sigma^2))``
over the weights; samples are clipped to ``[-1, 1]^7`` (the fusion action range of every agent here).

One *generation*:

1. ``population`` candidates (default: one per env row, i.e. B) are sampled from the agent's own seeded
   generator. Row ``i`` of the batch plays candidate ``i % population``, so with a smaller population several
   rows share (and jointly score) a candidate.
2. For ``steps_per_generation`` env steps ``act(explore=True)`` returns each row's candidate and ``observe``
   adds each row's mixed reward ``retention_weight * retention_reward + immediate_weight * reward`` (the same
   mix and defaults as :class:`~retentionrl.agents.td3.TD3Config`). Scores belong to the *candidate*, not the
   user: when a row's episode ends mid-generation the row is refilled with a new user and simply keeps
   accumulating for the same candidate. Every row plays exactly ``steps_per_generation`` steps, so a candidate's
   score is its rows' mean per-step reward (sum / steps, averaged over the rows that share it). With the
   ``kuaisim`` preset a session lasts 5 requests, so the default 20 steps cover 4 session ends per row.
3. The top ``ceil(elite_frac * population)`` candidates (ties broken by index, stable sort) are the elite;
   ``mu <- smoothing * mu + (1 - smoothing) * mean(elite)`` and
   ``sigma <- max(smoothing * sigma + (1 - smoothing) * std(elite), min_sigma)`` (population std; the floor is
   the usual noise term that keeps CEM from collapsing on noisy scores). Then a new generation is sampled.

``act(explore=False)`` returns ``mu`` for every row (deterministic; the evaluation freezes it).
``act(explore=True)`` returns the current generation's candidates (sampling the first generation on the first
call, when the batch size B is known). Steps observed while no generation is running (the training loop's
random warm-up: set ``warmup_steps: 0`` for CEM) are ignored.

Objective note: with the retention reward (negative return day / 10 at session ends) the per-step score also
depends on how often sessions end; with the fixed-length ``temper`` leave model every candidate ends sessions
equally often, so it ranks candidates by their mean return time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import Agent
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import NB, Obs, StepOutput


@dataclass
class CEMConfig:
    population: int | None = None  # candidates per generation; None: one per env row (B); must be <= B
    steps_per_generation: int = 20  # env steps every candidate is scored on (kuaisim: 5-request sessions)
    elite_frac: float = 0.2  # fraction of the population refitted on (at least one candidate)
    init_mu: list[float] = field(default_factory=lambda: [0.0] * NB)  # initial mean of the weights
    init_sigma: float = 0.5  # initial std of every weight (uniform [-1, 1] has std 0.58)
    smoothing: float = 0.3  # weight of the old mu / sigma in the refit (0: plain CEM)
    min_sigma: float = 0.05  # noise floor on sigma after every refit
    retention_weight: float = 1.0  # score = retention_weight * retention_reward + immediate_weight * reward
    immediate_weight: float = 0.0


class CEM(Agent):
    action_mode = "fusion"
    learns = False  # learns in observe(); the training loop never calls update()

    def __init__(self, cfg: CEMConfig, seed: int = 0) -> None:
        _validate(cfg)
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.mu = torch.tensor(cfg.init_mu, dtype=torch.float32)
        self.sigma = torch.full((NB,), float(cfg.init_sigma))
        self.candidates: Tensor | None = None  # (P, 7) current generation
        self.rows: int = 0  # B of the running generation
        self.returns: Tensor | None = None  # (B,) summed mixed reward of each row in this generation
        self.step_in_gen = 0
        self.generation = 0  # completed generations
        self.last_best = float("nan")  # best / mean / elite-mean score of the last completed generation
        self.last_mean = float("nan")
        self.last_elite = float("nan")

    # --- acting --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        B = obs.user.shape[0]
        if not explore:
            return self.mu.expand(B, -1).clone()
        if self.candidates is None:
            self._new_generation(B)
        elif B != self.rows:
            raise RetentionRLError(f"cem: act(explore=True) with {B} rows while the running generation has {self.rows}")
        return self._row_actions()

    def _row_actions(self) -> Tensor:
        assert self.candidates is not None
        return self.candidates[torch.arange(self.rows) % self.candidates.shape[0]].clone()

    def _new_generation(self, B: int) -> None:
        P = self.cfg.population or B
        if P > B:
            raise RetentionRLError(f"cem: population {P} exceeds the {B} env rows that score it")
        noise = torch.randn(P, NB, generator=self.gen)
        self.candidates = (self.mu + self.sigma * noise).clamp(-1.0, 1.0)
        self.rows = B
        self.returns = torch.zeros(B)
        self.step_in_gen = 0

    # --- learning ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, obs: Obs, action: Tensor, out: StepOutput) -> dict[str, float]:
        if self.candidates is None or self.returns is None:  # warm-up steps: no generation running
            return {}
        cfg = self.cfg
        r = cfg.retention_weight * out.retention_reward.float() + cfg.immediate_weight * out.reward.float()
        if r.shape != self.returns.shape:
            raise RetentionRLError(f"cem: observed rewards of shape {tuple(r.shape)}, generation has {self.rows} rows")
        self.returns += r  # per row = per candidate: a new user after an episode end keeps scoring the same one
        self.step_in_gen += 1
        if self.step_in_gen < cfg.steps_per_generation:
            return {}
        self._refit()
        self._new_generation(self.rows)
        return {"cem_generation": float(self.generation), "cem_best": self.last_best, "cem_mean": self.last_mean,
                "cem_elite": self.last_elite, "cem_sigma": float(self.sigma.mean())}

    def scores(self) -> Tensor:
        """(P,) mean per-step reward of each candidate of the running generation so far."""
        assert self.candidates is not None and self.returns is not None
        P = self.candidates.shape[0]
        idx = torch.arange(self.rows) % P
        tot = torch.zeros(P).index_add_(0, idx, self.returns)
        n = torch.zeros(P).index_add_(0, idx, torch.ones(self.rows))
        return tot / n / max(self.step_in_gen, 1)

    def _refit(self) -> None:
        assert self.candidates is not None
        cfg = self.cfg
        score = self.scores()
        P = score.shape[0]
        n_elite = max(1, math.ceil(cfg.elite_frac * P - 1e-9))
        order = torch.sort(score, descending=True, stable=True).indices
        elite = self.candidates[order[:n_elite]]
        a = cfg.smoothing
        self.mu = a * self.mu + (1 - a) * elite.mean(0)
        std = elite.std(0, unbiased=False)
        self.sigma = (a * self.sigma + (1 - a) * std).clamp_min(cfg.min_sigma)
        self.generation += 1
        self.last_best, self.last_mean = float(score.max()), float(score.mean())
        self.last_elite = float(score[order[:n_elite]].mean())

    # --- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "gen": self.gen.get_state(), "mu": self.mu.clone(), "sigma": self.sigma.clone(),
            "candidates": None if self.candidates is None else self.candidates.clone(),
            "returns": None if self.returns is None else self.returns.clone(),
            "rows": self.rows, "step_in_gen": self.step_in_gen, "generation": self.generation,
            "last": [self.last_best, self.last_mean, self.last_elite],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.mu, self.sigma = state["mu"].clone(), state["sigma"].clone()
        self.candidates = None if state["candidates"] is None else state["candidates"].clone()
        self.returns = None if state["returns"] is None else state["returns"].clone()
        self.rows, self.step_in_gen = int(state["rows"]), int(state["step_in_gen"])
        self.generation = int(state["generation"])
        self.last_best, self.last_mean, self.last_elite = (float(x) for x in state["last"])


def _validate(cfg: CEMConfig) -> None:
    def bad(msg: str) -> RetentionRLError:
        return RetentionRLError(f"agent: {msg}")

    if cfg.population is not None and cfg.population < 1:
        raise bad(f"population must be positive (or null for one per env row), got {cfg.population}")
    if cfg.steps_per_generation < 1:
        raise bad(f"steps_per_generation must be positive, got {cfg.steps_per_generation}")
    if not 0.0 < cfg.elite_frac <= 1.0:
        raise bad(f"elite_frac must be in (0, 1], got {cfg.elite_frac}")
    if len(cfg.init_mu) != NB or any(not -1.0 <= float(m) <= 1.0 for m in cfg.init_mu):
        raise bad(f"init_mu needs {NB} values in [-1, 1], got {cfg.init_mu}")
    if not cfg.init_sigma > 0.0:
        raise bad(f"init_sigma must be positive, got {cfg.init_sigma}")
    if not 0.0 <= cfg.smoothing < 1.0:
        raise bad(f"smoothing must be in [0, 1), got {cfg.smoothing}")
    if cfg.min_sigma < 0.0:
        raise bad(f"min_sigma must be non-negative, got {cfg.min_sigma}")


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> Agent:
    """The ``AGENTS`` factory: ``sim`` is unused (the policy is state-independent)."""
    from retentionrl.config import from_dict

    return CEM(from_dict(CEMConfig, cfg, "agent"), seed=seed)
