"""DQN at item level (Mnih et al., 2015), the discrete baseline of the RLIV-UA / RLUR comparisons.

Two-tower Q-function over (state, item)::

    Q(s, i) = <f(s), e(i)> + b(i)
    f(s) = MLP(StateEncoder(s))                                   (B, D)
    e(i) = id_embedding(i) + FeatureEncoder(item_cat[i], item_num[i])   (N, D), tables copied from the simulator

so scoring every candidate of a batch is one (B, D) @ (D, C) matmul. As a policy it is item-level
(``action_mode = "items"``): ``act`` returns Q(s, ·) over ``obs.candidates`` (B, C), the environment shows the
top K. Exploration (``act(explore=True)``) is epsilon-greedy per row: with probability ``eps`` a row's scores are
replaced by uniform random scores (a uniformly random slate), drawn from the agent's own generator; ``eps``
decays linearly from ``eps_start`` to ``eps_end`` over ``eps_decay_steps`` gradient updates.

Learning happens in :meth:`observe`, not through the training loop's replay buffer. The loop stores what ``act``
returned, (B, C) candidate scores for an item-level agent, which is large and does not say which items were shown.
The agent therefore keeps its own :class:`~retentionrl.replay.ReplayBuffer` whose ``action`` is the
shown slate (K,) long (``out.slate``), created on the first ``observe``; ``learns = False`` so the loop never
samples its own buffer for this agent (give the loop a small ``buffer_size``: its rows are never read). Once the
internal buffer holds ``learning_starts`` transitions, every ``observe`` does ``updates_per_step`` gradient steps
on batches of ``batch_size`` transitions.

Target (RLIV-UA: ``y = r + γ max_j Q'(s', I_j)``): each shown item ``k`` of a stored slate gets

    y = r + γ (1 - done) max_j Q_target(s', j)

with ``r = retention_weight * retention_reward + immediate_weight * reward`` and ``done`` per ``terminal`` (as in
TD3: by default nothing is terminal). The max runs over every item, or, with ``target_candidates = n``, over ``n``
items drawn uniformly without replacement per update (shared by the batch; from the agent's generator). The
environment's next-request candidates are not stored; for ``candidates: None`` environments the full max is
exact, for sampled-candidate environments a random subset of the same size is the matching approximation and also
the cheap one for large catalogues. The loss is the Huber loss between ``Q(s, slate_k)`` and ``y`` averaged over
the K shown items and the batch.

Simplification: the environment's reward is slate-level (the slate's mean of ``Σ_b w_b y_b``) and it is credited
to every shown item alike (SlateQ / RLIV-UA-style item decomposition without per-item credit). Under a fixed
behaviour policy the other items' share of the reward is the same for every item, so ``Q(s, i)`` ranks items by
their own contribution, but the item-level regression target carries the other K-1 items' noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from retentionrl.agents.base import Agent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import AgentSpec, done_mask, mixed_reward, soft_update, time_aware
from retentionrl.nets.item_q import TwoTowerQ
from retentionrl.nets.optim import adam
from retentionrl.replay import ReplayBuffer
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import OBS_FIELDS, Obs, StepOutput, obs_from_batch


@dataclass
class DQNConfig:
    gamma: float = 0.9
    tau: float = 0.005  # target network soft-update rate (every gradient step)
    lr: float = 1e-3
    batch_size: int = 128  # transitions per update (each gives K shown items)
    updates_per_step: int = 1  # gradient steps per observe() once learning has started
    learning_starts: int = 1000  # transitions (user rows) in the internal buffer before the first update
    buffer_size: int = 100_000  # internal replay capacity (transitions)
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 1000  # gradient updates over which eps goes linearly from eps_start to eps_end
    target_candidates: int | None = None  # None: max over every item; n: over n items sampled per update
    hidden: list[int] = field(default_factory=lambda: [64])  # MLP widths from the state encoding to f(s)
    state_dim: int = 64
    token_dim: int = 32
    dim: int = 32  # D: width of f(s) and e(i)
    item_ids: bool = True  # learn an id embedding per item on top of the item features
    huber_delta: float = 1.0
    grad_clip: float | None = 10.0  # max gradient norm (None: no clipping)
    retention_weight: float = 1.0
    immediate_weight: float = 0.0
    terminal: Literal["none", "session", "episode"] = "none"


class DQN(Agent):
    action_mode = "items"
    learns = False  # learns in observe() from its own slate replay (see module docstring)

    def __init__(self, sim, spec: AgentSpec, cfg: DQNConfig, seed: int = 0) -> None:
        if cfg.eps_decay_steps < 0 or not (0.0 <= cfg.eps_end <= 1.0 and 0.0 <= cfg.eps_start <= 1.0):
            raise RetentionRLError("dqn: eps_start / eps_end must be in [0, 1] and eps_decay_steps >= 0")
        if cfg.target_candidates is not None and cfg.target_candidates < 1:
            raise RetentionRLError(f"dqn: target_candidates must be positive or null, got {cfg.target_candidates}")
        if cfg.batch_size < 1 or cfg.updates_per_step < 0 or cfg.buffer_size < 1:
            raise RetentionRLError("dqn: batch_size and buffer_size must be positive, updates_per_step >= 0")
        torch.manual_seed(seed)
        self.cfg, self.batch_size, self.seed = cfg, cfg.batch_size, seed
        resp = sim.response
        self.n_items = int(sim.n_items)
        self.q = TwoTowerQ(spec, resp.item_cat, resp.item_num, list(sim.meta["item_cardinalities"]),
                           cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.dim, cfg.item_ids)
        self.q_t = copy.deepcopy(self.q)
        for p in self.q_t.parameters():
            p.requires_grad_(False)
        self.opt = adam(self.q.parameters(), cfg.lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.buffer = None  # ReplayBuffer of (obs, slate (K,) long, rewards, flags, next obs), built on first observe
        self.n_updates = 0
        self.n_observed = 0  # observe() calls (env steps)

    # --- acting ----------------------------------------------------------------------------------------------
    def epsilon(self) -> float:
        cfg = self.cfg
        frac = 1.0 if cfg.eps_decay_steps == 0 else min(1.0, self.n_updates / cfg.eps_decay_steps)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, C) Q-values of ``obs.candidates``; with ``explore``, each row is replaced by uniform random scores
        with probability ``epsilon()``."""
        scores = self.q.score(obs, obs.candidates)
        if explore:
            B, C = scores.shape
            rand_rows = torch.rand(B, generator=self.gen) < self.epsilon()
            n = int(rand_rows.sum())
            if n:
                scores[rand_rows] = torch.rand(n, C, generator=self.gen)
        return scores

    # --- learning --------------------------------------------------------------------------------------------
    def _make_buffer(self, obs_example: Obs, K: int):
        return ReplayBuffer(self.cfg.buffer_size, obs_example, (K,), torch.long, seed=self.seed + 2)

    def observe(self, obs: Obs, action: Tensor, out: StepOutput) -> dict[str, float]:
        """Store the step with the shown slate, then (after ``learning_starts``) do ``updates_per_step`` updates."""
        if action.dim() != 2 or action.shape[1] != obs.candidates.shape[-1]:
            raise RetentionRLError(
                f"dqn is an item-level agent: expected (B, C) candidate scores with C = {obs.candidates.shape[-1]}, got "
                f"an action of shape {tuple(action.shape)} (set the environment's action_mode: items)")
        if self.buffer is None:
            self.buffer = self._make_buffer(obs, int(out.slate.shape[1]))
        self.buffer.add(obs, out.slate, out)
        self.n_observed += 1
        info: dict[str, float] = {}
        if self.buffer.n_added >= self.cfg.learning_starts:
            for _ in range(self.cfg.updates_per_step):
                info = self.update(self.buffer.sample(self.cfg.batch_size))
        if info:
            info["epsilon"] = self.epsilon()
        return info

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step from a batch of the internal buffer (``action`` = shown slate (M, K) long)."""
        cfg = self.cfg
        slate = batch["action"].long()
        obs = obs_from_batch(batch)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)
        done = done_mask(batch, cfg.terminal)
        with torch.no_grad():
            if cfg.gamma != 0.0:
                nxt = obs_from_batch(batch, "next_")
                cand = None
                if cfg.target_candidates is not None and cfg.target_candidates < self.n_items:
                    cand = torch.randperm(self.n_items, generator=self.gen)[: cfg.target_candidates]
                v_next = self.q_t.score(nxt, cand).max(dim=1).values
                y = r + cfg.gamma * (1 - done) * v_next
            else:  # nothing to bootstrap: skip the target network's forward pass
                y = r
        q = self.q.q_of(obs, slate)  # (M, K)
        loss = nn.functional.huber_loss(q, y[:, None].expand_as(q), delta=cfg.huber_delta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.q.parameters(), cfg.grad_clip)
        self.opt.step()
        soft_update(self.q, self.q_t, cfg.tau)
        self.n_updates += 1
        return {"loss": float(loss.detach()), "q": float(q.detach().mean()), "target": float(y.mean())}

    # --- persistence -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, target, optimiser, generator, counters and the internal replay (tensors and plain values).
        A full internal buffer is returned as its live storage (save before the next observe)."""
        return {"q": self.q.state_dict(), "q_t": self.q_t.state_dict(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(), "n_updates": self.n_updates, "n_observed": self.n_observed,
                "buffer": None if self.buffer is None else self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_t.load_state_dict(state["q_t"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.n_updates, self.n_observed = int(state["n_updates"]), int(state["n_observed"])
        buf = state["buffer"]
        if buf is None:
            self.buffer = None
            return
        data = buf["data"]
        if self.buffer is None:  # rebuild the lazily created buffer with the saved layout (size >= 1 once created)
            example = Obs(**{name: data[name][:1] for name in OBS_FIELDS}, candidates=torch.empty(0, dtype=torch.long))
            self.buffer = self._make_buffer(example, int(data["action"].shape[1]))
        self.buffer.load_state_dict(buf)


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> DQN:
    """Registry entry: ``cfg`` holds :class:`DQNConfig` fields (unknown keys are errors)."""
    from retentionrl.config import from_dict

    c = from_dict(DQNConfig, cfg, "agent")
    return DQN(sim, agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
