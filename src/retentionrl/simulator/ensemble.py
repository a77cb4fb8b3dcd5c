"""Where the simulator extrapolates: disagreement of the bundle's bootstrap members on what a policy visited.

Each member is a response model and a learned return model refitted on a bootstrap resample of users
(:class:`~retentionrl.simulator.build.EnsembleConfig`). Where the logs say a lot (popular items, common
session shapes) the members agree; where a policy drives users into situations the logs never showed, each
member falls back on its own initialisation and resample, and they disagree. Two figures, over the visited
trajectory (the main model simulates; members only follow it, each with its own encoding of the history):

* ``disagreement_click`` — std across members of the click *logit* (log-odds) of each shown item (given the
  member's state before the request), averaged over shown items. Log-odds rather than probability: a policy
  that leaves the data's support often does so towards near-certain outcomes (ranking against clicks shows
  items with P(click) ~ 0.02), where the probability scale squeezes any disagreement towards 0;
* ``disagreement_return`` — std across members of the predicted mean return day (the members' learned
  return models on their own end-of-session features), averaged over session ends. It is a measure of data
  support for every preset, also where the env's return law is geometric (KuaiSim, random-state): it asks
  whether models fitted on the logs agree about the visited end-of-session situation.

The cost is bounded by tracking only the first ``rows`` rows of the batch (rows are refilled with fresh users
as their episodes end, so the sample covers many users).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.simulator.env import Obs, StepOutput
from retentionrl.simulator.response import ResponseModel
from retentionrl.simulator.returns import session_features

if TYPE_CHECKING:
    from retentionrl.simulator.bundle import Simulator

CLICK = BEHAVIOURS.index("click")
TRACKED_ROWS = 64
KEYS = ("disagreement_click", "disagreement_return")


class DisagreementTracker:
    """Follows the first ``rows`` rows of an env with every member; accumulates the two disagreements (population
    std over the M members, averaged over shown items and over session ends)."""

    def __init__(self, sim: "Simulator", rows: int = TRACKED_ROWS) -> None:
        self.members = sim.members
        self.R = rows
        with torch.no_grad():
            self.item_vecs = [resp.item_vectors() for resp, _ in self.members]  # (N, D) per member
        self.sum = {k: 0.0 for k in KEYS}
        self.n = {k: 0 for k in KEYS}

    def _init(self, obs: Obs, rows: Tensor) -> list:
        return [resp.init_cache(obs.user[rows], obs.hist_items[rows], obs.hist_resp[rows], obs.hist_pad[rows], iv)
                for (resp, _), iv in zip(self.members, self.item_vecs)]

    @torch.no_grad()
    def reset(self, obs: Obs) -> None:
        """Start following the first R rows of ``obs`` (the env's observation after ``reset``)."""
        self.R = min(self.R, len(obs.user))
        rows = torch.arange(self.R)
        self.caches = self._init(obs, rows)
        self.acc_resp = torch.zeros(self.R, len(BEHAVIOURS))
        self.acc_watch = torch.zeros(self.R)
        self.acc_exp = torch.zeros(self.R, dtype=torch.long)

    @torch.no_grad()
    def update(self, obs: Obs, out: StepOutput) -> None:
        """``obs``: what the policy saw before the step (session index and previous gap of the session);
        ``out``: the step's output (slate, responses, session and episode ends, observation after refills)."""
        R = self.R
        if not self.members or R == 0:
            return
        slate, y, watch = out.slate[:R], out.responses[:R], out.watch_time[:R]
        tokens = ResponseModel.token_features(y, watch)
        clicks = []
        for (resp, _), cache, iv in zip(self.members, self.caches, self.item_vecs):
            logits = resp.score(resp.queries(cache.state), slate, iv)  # (R, K, 8), from the state before the slate
            clicks.append(logits[..., CLICK])
            resp.extend(cache, slate, tokens, iv)
        self._add("disagreement_click", torch.stack(clicks).std(0, correction=0))  # (R, K)
        self.acc_resp += y.sum(1)
        self.acc_watch += watch.sum(1)
        self.acc_exp += slate.shape[1]
        end = out.session_end[:R]
        if end.any():
            days = torch.arange(1, self.members[0][1].max_day + 1, dtype=torch.float32)
            means = []
            for (_, ret), cache in zip(self.members, self.caches):
                f = session_features(cache.state[end], self.acc_exp[end], self.acc_resp[end], self.acc_watch[end],
                                     obs.session_index[:R][end], obs.days_since_last[:R][end])
                means.append(torch.softmax(ret(f), -1) @ days)
            self._add("disagreement_return", torch.stack(means).std(0, correction=0))
            self.acc_resp[end], self.acc_watch[end], self.acc_exp[end] = 0.0, 0.0, 0
        ep = out.episode_end[:R]
        if ep.any():  # the env refilled these rows with fresh users: follow them from their logged history
            for cache, fresh in zip(self.caches, self._init(out.obs, torch.nonzero(ep).squeeze(1))):
                cache.assign(ep, fresh)

    def _add(self, key: str, std: Tensor) -> None:
        self.sum[key] += float(std.double().sum())
        self.n[key] += std.numel()

    def result(self) -> dict[str, float | None]:
        return {k: self.sum[k] / self.n[k] if self.n[k] else None for k in KEYS}


@torch.no_grad()
def logged_like_disagreement(sim: "Simulator", preset: str, env_overrides: dict[str, Any], users: str = "test",
                             seed: int = 0, steps: int = 60, rows: int = TRACKED_ROWS) -> dict[str, float | None]:
    """The members' disagreement on the logged-like policy's trajectory (the calibration policy: slates
    sampled in proportion to logged exposures) in the same env config: the reference a policy's figure is read
    against. ``rows`` users for ``steps`` requests; computed once per bundle and env config (cached on ``sim``)."""
    from retentionrl.simulator.calibration import LoggedLikePolicy, item_popularity

    key = json.dumps([preset, env_overrides, users, seed, steps, rows], sort_keys=True, default=str)
    if key not in sim._reference:
        over = {k: v for k, v in env_overrides.items() if k != "action_mode"}
        env = sim.make_env(preset, **{**over, "n_users": rows, "users": users, "action_mode": "items"})
        policy = LoggedLikePolicy(item_popularity(sim), seed=seed + 1)
        tracker = DisagreementTracker(sim, rows)
        obs = env.reset(seed)
        tracker.reset(obs)
        for _ in range(steps):
            out = env.step(policy(obs))
            tracker.update(obs, out)
            obs = out.obs
        sim._reference[key] = tracker.result()
    return dict(sim._reference[key])
