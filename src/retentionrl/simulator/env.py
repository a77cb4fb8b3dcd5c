"""The batched cross-session environment (torch; no per-user Python loop in ``step``).

One row of the batch is one simulated user. Each ``step`` is one request: rank candidates, show the top-K slate,
sample the user's 7 behaviours per item from the response model, then ask the leave model whether the session
ends; at a session end ask the return model on which day the user comes back. A session end is *not* terminal:
the same user continues with their history; the user's episode ends after ``max_sessions`` sessions, when the
row is refilled with a fresh user (auto-reset, same step; ``next_obs`` keeps the true successor).

Action modes: ``fusion`` — ``a`` (B, 7), score ``Σ_b a_b σ(logit_b(s, i))``; ``items`` — ``a`` (B, C) scores of
the C candidates in ``obs.candidates``.

Candidates: every item (``candidates: null``), a fresh uniform sample of C items per request shared by the batch,
or (``candidate_source: ranked``) a ranking stage's: each user's top C items by the response model's predicted
immediate reward ``Σ_b w_b σ(logit_b(s, i))`` after their history, (B, C) per row (sorted by item id, so that a
policy's scores, not the pre-ranking's order, decide the slate).

User-author pairs (``ua_counts: true``, RLIV-UA's state): the env keeps each row's counts of exposures, clicks,
long views, likes and follows per author (``UA_KINDS``), started from the user's logged initial history and grown by
every shown item, and exposes the candidates' counts (``obs.ua_counts`` (B, C, 5)) and the shown items' counts
before the step (``StepOutput.slate_ua`` (B, K, 5)). Two items of one author in one slate both see the count
before the slate (the pair's state at that request).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from retentionrl.config import OMIT_IF_DEFAULT
from retentionrl.data.schema import BEHAVIOURS, UA_KINDS
from retentionrl.errors import RetentionRLError
from retentionrl.spaces import Obs, StepOutput
from retentionrl.simulator.leave import TemperLeave, leave_features
from retentionrl.simulator.response import ResponseModel
from retentionrl.simulator.returns import session_features

if TYPE_CHECKING:
    from retentionrl.simulator.bundle import Simulator

NB = len(BEHAVIOURS)
_FUSION_CHUNK = 64


class ActionError(RetentionRLError):
    """An action of the wrong shape or with NaN/inf."""


@dataclass
class LeaveConfig:
    kind: Literal["temper", "satisfaction", "learned"] = "temper"
    initial_temper: float = 5.0
    satisfaction_drop: float = 2.0  # extra temper lost by a slate with zero reward ("satisfaction" only)
    # temper saved by a slate of twice the reference reward ("satisfaction" only; 0: sessions <= initial_temper)
    satisfaction_gain: float = field(default=0.0, metadata={OMIT_IF_DEFAULT: True})
    max_requests: int | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})  # session cap (temper kinds)


@dataclass
class ReturnConfig:
    kind: Literal["geometric", "learned"] = "geometric"
    bias: float = 0.4
    feedback_influence: float = 0.1
    # fitted: per-user term from the logs. none: off. random_state: KuaiSim's kind — an untrained random linear
    # map of the end-of-session user state (seeded by state_seed), scaled to the fitted term's spread over users;
    # the policy then steers return time through the state, with no support in the data (an ablation).
    personal: Literal["fitted", "none", "random_state"] = "fitted"
    personal_scale: float = 1.0
    state_seed: int = 0
    # Per-behaviour weights of the session feedback the geometric law reads, (_acc_resp @ v) / (n_requests * K);
    # None: the immediate reward weights (the session's mean immediate reward, KuaiSim's). Set to decouple
    # retention from the immediate reward (the synthetic retention test: reward = click, feedback = long view).
    feedback_weights: list[float] | None = None


@dataclass
class EnvConfig:
    n_users: int = 32  # batch of simultaneous users
    slate_size: int = 6
    max_sessions: int = 6
    max_return_day: int | None = None  # D; None: the bundle's (the learned return model is fixed to it)
    action_mode: Literal["fusion", "items"] = "fusion"
    candidates: int | None = None  # None: every item; else a fresh uniform sample of this many per request
    # uniform: the sample above, shared by the batch; ranked: each user's top `candidates` by predicted reward
    candidate_source: Literal["uniform", "ranked"] = field(default="uniform", metadata={OMIT_IF_DEFAULT: True})
    ua_counts: bool = field(default=False, metadata={OMIT_IF_DEFAULT: True})  # keep user-author pair counts
    reward_weights: list[float] | None = None  # per behaviour; None: the bundle's (KuaiSim's #pos/#neg, hate < 0)
    retention_reward: Literal["neg_day_over_10", "inverse_day"] = "neg_day_over_10"
    users: Literal["all", "train", "test"] = "all"  # which users fresh episodes draw from (bundle's split)
    initial_history: Literal["logged", "empty"] = "logged"
    leave: LeaveConfig = field(default_factory=LeaveConfig)
    returns: ReturnConfig = field(default_factory=ReturnConfig)


PRESETS: dict[str, dict] = {
    # KuaiSim's cross-session scripts: 6 sessions, D = 10, temper 5, bias 0.4, feedback 0.1, slate 6, 32 users.
    "kuaisim": {},
    # Every part learned from the logs; leave and return models per exposure, so any slate size.
    "learned": {"leave": {"kind": "learned"}, "returns": {"kind": "learned"}},
}


def preset(name: str, **overrides) -> EnvConfig:
    from retentionrl.config import from_dict, merge

    if name not in PRESETS:
        raise RetentionRLError(f"unknown simulator preset '{name}' (known: {', '.join(PRESETS)})")
    return from_dict(EnvConfig, merge(PRESETS[name], overrides), f"preset {name}")


class RetentionEnv:
    def __init__(self, sim: "Simulator", cfg: EnvConfig) -> None:
        if cfg.max_return_day is None:
            cfg = replace(cfg, max_return_day=sim.max_return_day)
        self.sim, self.cfg = sim, cfg
        self.model: ResponseModel = sim.response.eval()
        self.n_items = sim.n_items
        self.H = self.model.cfg.window
        self.K = cfg.slate_size
        if cfg.slate_size > (cfg.candidates or self.n_items):
            raise RetentionRLError(f"slate_size {cfg.slate_size} exceeds the number of candidates")
        if cfg.slate_size >= self.H:
            raise RetentionRLError(f"slate_size {cfg.slate_size} must be smaller than the response model's history window {self.H}")
        with torch.no_grad():
            self.item_vecs = self.model.item_vectors()  # (N, D), cached: the scoring matrix
            self.item_bias = (self.model.item_bias.weight + self.model.out_bias).contiguous()  # (N, 8)
            # Bias folded into the matmul: [v_i, b_1(i)..b_7(i)] against [q_b, onehot(b)] -> one GEMM, no
            # separate (B, 7, N) add. (D + 7, N), contiguous for MKL.
            self.scoring_t = torch.cat([self.item_vecs, self.item_bias[:, :NB]], 1).T.contiguous()
        w = cfg.reward_weights if cfg.reward_weights is not None else sim.reward_weights
        if len(w) != NB:
            raise RetentionRLError(f"reward_weights needs {NB} values ({', '.join(BEHAVIOURS)}), got {len(w)}")
        self.w = torch.tensor(w, dtype=torch.float32)
        v = cfg.returns.feedback_weights
        if v is not None and len(v) != NB:
            raise RetentionRLError(f"returns.feedback_weights needs {NB} values ({', '.join(BEHAVIOURS)}), got {len(v)}")
        self.v = None if v is None else torch.tensor(v, dtype=torch.float32)
        self.pool = sim.user_pool(cfg.users)
        if cfg.candidate_source == "ranked" and cfg.candidates is None:
            raise RetentionRLError("candidate_source 'ranked' needs candidates: the number each user's ranking stage passes on")
        if cfg.ua_counts:
            # dense author codes (N,); items of unknown author (-1) get a code of their own that never counts
            raw = sim.item_author
            uniq, code = torch.unique(torch.where(raw >= 0, raw, raw.new_full((), -1)), return_inverse=True)
            self.author = code
            self.n_authors = len(uniq)
            self._author_known = raw >= 0
            self._ua_cols = [BEHAVIOURS.index(k) for k in UA_KINDS[1:]]  # response columns of the counted kinds
        B = cfg.n_users
        self.leave = sim.make_leave(cfg, B)
        self.returns = sim.make_returns(cfg)
        self.gen = torch.Generator()
        self.B = B
        self._obs: Obs | None = None
        self._buf: Tensor | None = None  # scratch logits for fusion scoring

    # --- reset ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, seed: int | None = None) -> Obs:
        if seed is not None:
            self.gen.manual_seed(int(seed))
        B = self.B
        self._obs = Obs(
            user=torch.zeros(B, dtype=torch.long),
            profile_cat=torch.zeros(B, self.model.user_cat.shape[1], dtype=torch.long),
            profile_num=torch.zeros(B, self.model.user_num.shape[1]),
            hist_items=torch.zeros(B, self.H, dtype=torch.long),
            hist_resp=torch.zeros(B, self.H, NB + 1), hist_pad=torch.ones(B, self.H, dtype=torch.bool),
            session_index=torch.zeros(B, dtype=torch.long), step_in_session=torch.zeros(B, dtype=torch.long),
            days_since_last=torch.zeros(B), candidates=self._draw_candidates(),
        )
        if self.cfg.ua_counts:
            self._ua = torch.zeros(B, self.n_authors, len(UA_KINDS))  # (B, A, 5) pair counts per row
        self._acc_resp = torch.zeros(B, NB)
        self._acc_watch = torch.zeros(B)
        self._acc_reward = torch.zeros(B)
        self._cache = None  # response-model encoding of each row's history (HistoryCache)
        self._refill(torch.ones(B, dtype=torch.bool))
        if self.cfg.candidate_source == "ranked":
            self._obs.candidates = self._ranked_candidates()
        self._attach_ua(self._obs)
        return self._obs.clone()

    def _draw_candidates(self) -> Tensor:
        if self.cfg.candidates is None:
            return torch.arange(self.n_items)
        if self.cfg.candidate_source == "ranked":  # placeholder until the rows' states exist (reset)
            return torch.zeros(self.B, self.cfg.candidates, dtype=torch.long)
        return torch.randperm(self.n_items, generator=self.gen)[: self.cfg.candidates].sort().values

    def _ranked_candidates(self, rows: Tensor | None = None) -> Tensor:
        """(n, C) the top C items of ``rows`` (n,) (None: every row) by the predicted immediate reward after their
        history, sorted by id."""
        state = self._state if rows is None else self._state[rows]
        q = self.model.queries(state)[:, :NB]
        score = self._fusion_scores(q, self.w.expand(len(state), NB), torch.arange(self.n_items))
        return torch.topk(score, self.cfg.candidates, dim=1).indices.sort(dim=1).values

    def _attach_ua(self, o: Obs) -> None:
        """Set ``o.ua_counts`` (B, C, 5) from the pair table (nothing without ``ua_counts``)."""
        if not self.cfg.ua_counts:
            return
        cand = o.candidates if o.candidates.dim() == 2 else o.candidates.expand(self.B, -1)
        o.ua_counts = self._ua[torch.arange(self.B)[:, None], self.author[cand]]

    def _count_pairs(self, rows: Tensor, items: Tensor, labels: Tensor) -> None:
        """Add ``labels`` (n, L, 5) of ``items`` (n, L) shown to ``rows`` (n,) to the pair table (padding: label 0)."""
        known = self._author_known[items][..., None]
        flat = (rows[:, None] * self.n_authors + self.author[items]).reshape(-1)
        self._ua.view(-1, len(UA_KINDS)).index_add_(0, flat, (labels * known).reshape(-1, len(UA_KINDS)))

    def _ua_labels(self, y: Tensor, shown: Tensor) -> Tensor:
        """(..., 5) the counted kinds of responses ``y`` (..., 7); ``shown`` (...) is the exposure count (0 or 1)."""
        return torch.cat([shown[..., None], y[..., self._ua_cols]], -1)

    def _refill(self, mask: Tensor) -> None:
        """Start fresh users in the rows of ``mask`` (B,) bool."""
        o = self._obs
        n = int(mask.sum())
        if n == 0:
            return
        users = self.pool[torch.randint(len(self.pool), (n,), generator=self.gen)]
        o.user[mask] = users
        o.profile_cat[mask] = self.model.user_cat[users]
        o.profile_num[mask] = self.model.user_num[users]
        if self.cfg.initial_history == "logged":
            o.hist_items[mask] = self.sim.init_items[users]
            o.hist_resp[mask] = self.sim.init_resp[users]
            o.hist_pad[mask] = self.sim.init_pad[users]
        else:
            o.hist_items[mask], o.hist_resp[mask], o.hist_pad[mask] = 0, 0.0, True
        o.session_index[mask] = 0
        o.step_in_session[mask] = 0
        o.days_since_last[mask] = 0.0
        self._acc_resp[mask], self._acc_watch[mask], self._acc_reward[mask] = 0.0, 0.0, 0.0
        self.leave.reset(mask)
        if self.cfg.ua_counts:  # a fresh user's pairs start from their logged initial history
            rows = torch.nonzero(mask).squeeze(1)
            self._ua[rows] = 0.0
            shown = (~o.hist_pad[rows]).float()
            self._count_pairs(rows, o.hist_items[rows], self._ua_labels((o.hist_resp[rows, :, :NB] > 0.5).float() * shown[..., None], shown))
        fresh = self.model.init_cache(o.user[mask], o.hist_items[mask], o.hist_resp[mask], o.hist_pad[mask], self.item_vecs)
        if self._cache is None or n == self.B:
            self._cache = fresh
        else:
            self._cache.assign(mask, fresh)

    @property
    def _state(self) -> Tensor:
        """(B, D) the response model's state of each user after their history so far."""
        return self._cache.state

    # --- step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, action: Tensor) -> StepOutput:
        if self._obs is None:
            raise RetentionRLError("call reset() before step()")
        o, B, K = self._obs, self.B, self.K
        action = self._check_action(action)
        cand = o.candidates
        q = self.model.queries(self._state)  # (B, 8, D)
        if self.cfg.action_mode == "fusion":
            score = self._fusion_scores(q[:, :NB], action, cand)
        else:
            score = action
        pick = torch.topk(score, K, dim=1).indices  # (B, K) positions in cand
        slate = cand.gather(1, pick) if cand.dim() == 2 else cand[pick]
        v = self.item_vecs[slate]  # (B, K, D)
        logits = torch.einsum("bod,bkd->bko", q, v) + self.item_bias[slate]  # (B, K, 8)
        y = torch.bernoulli(torch.sigmoid(logits[..., :NB]), generator=self.gen)
        noise = torch.randn(logits[..., NB].shape, generator=self.gen)
        watch = torch.expm1((logits[..., NB] + self.sim.watch_sigma * noise).clamp(min=0.0, max=12.0))
        reward = y.mean(1) @ self.w  # (B,)
        slate_ua = None
        if self.cfg.ua_counts:
            rows = torch.arange(B)
            slate_ua = self._ua[rows[:, None], self.author[slate]]  # (B, K, 5) before this slate
            self._count_pairs(rows, slate, self._ua_labels(y, torch.ones(B, K)))

        # History: drop the oldest K slots, append the slate with its responses.
        tokens = ResponseModel.token_features(y, watch)
        o.hist_items = torch.cat([o.hist_items[:, K:], slate], 1)
        o.hist_resp = torch.cat([o.hist_resp[:, K:], tokens], 1)
        o.hist_pad = torch.cat([o.hist_pad[:, K:], torch.zeros(B, K, dtype=torch.bool)], 1)
        o.step_in_session += 1
        self._acc_resp += y.sum(1)
        self._acc_watch += watch.sum(1)
        self._acc_reward += reward
        session_reward = self._acc_reward.clone()
        learned_leave = not isinstance(self.leave, TemperLeave)
        self._cache = self.model.extend(self._cache, slate, tokens, self.item_vecs, all_states=learned_leave)

        # The learned leave model is a per-exposure hazard: features of each shown item k (the state after it,
        # its position in the session in exposures, its responses), as in the logs where a row is an exposure.
        lfeat = None
        if learned_leave:
            position = (o.step_in_session - 1)[:, None] * K + torch.arange(1, K + 1)  # (B, K)
            lfeat = leave_features(self._cache.slate_states, position, y)
        end = self.leave.sample(reward, lfeat, self.gen)
        return_day = torch.zeros(B, dtype=torch.long)
        ret_reward = torch.zeros(B)
        episode_end = torch.zeros(B, dtype=torch.bool)
        if end.any():
            e = end
            n_req = o.step_in_session[e]
            feats = session_features(  # in exposures (n_req * K), as the return model was fitted on the log
                self._state[e], n_req * K, self._acc_resp[e], self._acc_watch[e], o.session_index[e],
                o.days_since_last[e],
            )
            dist = self.returns.distribution(o.user[e], self._feedback(e, n_req), feats)
            d = torch.multinomial(dist, 1, generator=self.gen).squeeze(1) + 1
            return_day[e] = d
            ret_reward[e] = -d.float() / 10.0 if self.cfg.retention_reward == "neg_day_over_10" else 1.0 / d.float()
            o.session_index[e] += 1
            o.days_since_last[e] = d.float()
            o.step_in_session[e] = 0
            self._acc_resp[e], self._acc_watch[e], self._acc_reward[e] = 0.0, 0.0, 0.0
            self.leave.reset(e)
            episode_end = e & (o.session_index >= self.cfg.max_sessions)
        ranked = self.cfg.candidate_source == "ranked"
        if ranked:
            o.candidates = self._ranked_candidates()
        elif self.cfg.candidates is not None:
            o.candidates = self._draw_candidates()
        self._attach_ua(o)
        next_obs = o.clone()
        users = o.user.clone()
        if episode_end.any():
            self._refill(episode_end)
            if ranked:  # the fresh users' own candidates
                o.candidates = o.candidates.clone()
                o.candidates[episode_end] = self._ranked_candidates(torch.nonzero(episode_end).squeeze(1))
            self._attach_ua(o)
        return StepOutput(
            slate=slate, responses=y, watch_time=watch, reward=reward, session_end=end, return_day=return_day,
            retention_reward=ret_reward, session_reward=session_reward, episode_end=episode_end, next_obs=next_obs,
            obs=o.clone(), users=users, slate_ua=slate_ua,
        )

    def _feedback(self, rows: Tensor, n_req: Tensor) -> Tensor:
        """(n,) the session feedback of the ending ``rows`` that the geometric return law reads: the session's mean
        immediate reward, or with ``returns.feedback_weights`` v the per-exposure mean of ``Σ_b v_b y_b``."""
        if self.v is None:
            return self._acc_reward[rows] / n_req
        return (self._acc_resp[rows] @ self.v) / (n_req * self.K)

    def _fusion_scores(self, q: Tensor, action: Tensor, cand: Tensor) -> Tensor:
        """q (B, 7, D), action (B, 7) -> (B, C) scores Σ_b a_b σ(logit_b(i)) of every candidate.

        The logits are the step's dominant cost. They are computed for 32 users at a time into a reused
        (32 * 7, C) buffer and squashed in place: allocating the full (B * 7, C) matrix each step costs as much
        as the GEMM itself on CPU (page faults), and the small buffer stays in cache.
        """
        B = q.shape[0]
        qa = torch.cat([q, torch.eye(NB).expand(B, NB, NB)], 2)
        if cand.dim() == 2:  # per-row candidates (B, C): a batched product over each row's own items
            logits = torch.bmm(qa, self.scoring_t.T[cand].transpose(1, 2))  # (B, 7, C)
            return torch.bmm(action[:, None, :], logits.sigmoid_()).squeeze(1)
        mat = self.scoring_t if self.cfg.candidates is None else self.scoring_t[:, cand]
        qa = qa.reshape(B * NB, -1)
        c = min(B, _FUSION_CHUNK)
        if self._buf is None or self._buf.shape != (c * NB, mat.shape[1]):
            self._buf = torch.empty(c * NB, mat.shape[1])
        score = torch.empty(B, 1, mat.shape[1])
        for s in range(0, B, c):
            n = min(c, B - s)
            buf = self._buf[: n * NB]
            torch.mm(qa[s * NB : (s + n) * NB], mat, out=buf)
            torch.bmm(action[s : s + n, None, :], buf.sigmoid_().view(n, NB, -1), out=score[s : s + n])
        return score.squeeze(1)

    def _check_action(self, action: Tensor) -> Tensor:
        try:
            action = torch.as_tensor(action, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ActionError(f"action must be a numeric tensor or array: {exc}") from None
        width = NB if self.cfg.action_mode == "fusion" else self._obs.candidates.shape[-1]
        what = "fusion weights (one per behaviour)" if self.cfg.action_mode == "fusion" else "candidate scores"
        if action.shape != (self.B, width):
            raise ActionError(f"action must have shape ({self.B}, {width}) of {what}, got {tuple(action.shape)}")
        if not torch.isfinite(action).all():
            bad = torch.nonzero(~torch.isfinite(action))[0].tolist()
            raise ActionError(f"action has a NaN or infinite value at row {bad[0]}, column {bad[1]}")
        return action

    @property
    def obs(self) -> Obs:
        if self._obs is None:
            raise RetentionRLError("call reset() first")
        return self._obs.clone()

    # --- checkpointing: a resumed training run continues the same simulated users ------------------------------
    _ACC = ("_acc_resp", "_acc_watch", "_acc_reward")

    def state_dict(self) -> dict[str, Tensor | int]:
        """Everything that evolves between steps, as tensors (safe for ``torch.load(weights_only=True)``)."""
        if self._obs is None:
            raise RetentionRLError("call reset() before saving the environment")
        out: dict[str, Tensor | int] = {f"obs.{f.name}": getattr(self._obs, f.name).clone() for f in fields(Obs)
                                        if getattr(self._obs, f.name) is not None}
        out.update({k: getattr(self, k).clone() for k in self._ACC})
        if self.cfg.ua_counts:
            out["ua"] = self._ua.clone()
        c = self._cache
        out.update({"cache.k": c.k.clone(), "cache.v": c.v.clone(), "cache.pad": c.pad.clone(),
                    "cache.state": c.state.clone(), "cache.start": c.start, "gen": self.gen.get_state()})
        if isinstance(self.leave, TemperLeave):
            out["temper"] = self.leave.temper.clone()
            out["leave_requests"] = self.leave.requests.clone()
        return out

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        from retentionrl.nets.encoders import HistoryCache

        self._obs = Obs(**{f.name: state[f"obs.{f.name}"].clone() for f in fields(Obs) if f"obs.{f.name}" in state})
        if self._obs.user.shape[0] != self.B:
            raise RetentionRLError(f"saved environment has {self._obs.user.shape[0]} users, this one {self.B}")
        for k in self._ACC:
            setattr(self, k, state[k].clone())
        self._cache = HistoryCache(state["cache.k"].clone(), state["cache.v"].clone(), state["cache.pad"].clone(),
                                   state["cache.state"].clone(), int(state["cache.start"]))
        self.gen.set_state(state["gen"])
        if isinstance(self.leave, TemperLeave):
            self.leave.temper = state["temper"].clone()
            if "leave_requests" in state:  # (absent from checkpoints made before the counter existed)
                self.leave.requests = state["leave_requests"].clone()
        if self.cfg.ua_counts:
            if "ua" not in state:
                raise RetentionRLError("saved environment has no user-author pair counts; this one keeps them (ua_counts)")
            self._ua = state["ua"].clone()

