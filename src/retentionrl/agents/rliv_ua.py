"""RLIV-UA (Li et al., 2025): the lifelong interaction value of user–author pairs, an item-level re-ranker.

State of a pair ``s_ua = {f_u, f_a, f_ua^t}``: the user's profile features, the item's and its author's static
features (item features, item id, author id) and the pair's counts so far (``UA_KINDS``: exposures, clicks, long
views, likes, follows), embedded by one layer shared by every tower into ``H = concat(h_u, h_a, h_ua)``
(:class:`UAEmbedding`; counts enter as ``log1p``). One tower per task ``l`` (click, watch time, follow; gift
where the data has it)::

    Q_l,k(H) = r̂_l(H) + γ · V̂_l,k(H)             k = 1, 2 (Eq. 8: the auxiliary reward head r̂ and two value heads)
    y_l      = r_l + γ · max_j min_k Q'_l,k(Ĥ'_j)   over the author's items j, target networks Q' (Eq. 5, 7)
    L_l      = huber(r̂_l(H), r_l) + Σ_k huber(Q_l,k(H), y_l)                                  (Eq. 9)
    L        = Σ_l L_l + BCE(gift assistance(h_u, h_a), gift)                                (Eq. 10)

``Ĥ'_j`` is the successor state by Adjacent State Approximation (Eq. 4, :func:`~retentionrl.data.ua_pairs.asa_next`):
the same user, item ``j`` of the same author, the pair's counts + 1 for every kind that happened at this exposure.
The item set ``I`` of an author is every catalogue item with that ``author_id`` (padded to the largest author;
KuaiRand-Pure: 5,483 authors, 1.12 items each, at most 6). Rewards are the shown item's own responses: click and
follow 0/1, watch time ``log1p(seconds)`` (bounded, so that one Huber scale fits the towers). w/o SL
(``auxiliary: false``) drops r̂ and its loss: ``Q = γ V̂``, the plain double Q (V̂ absorbs the scale); w/o MT keeps
only the towers named in ``score``.

**Serving form.** ``act`` scores the env's candidates — a ranking stage's N (< 300) items per user, pre-ranked by
the response model (``candidate_source: ranked``) — by ``Σ_l score[l] · min_k Q_l,k``, the env shows the top K.
The paper ranks by the watch-time LIV offline (the default ``score: {watch_time: 1}``).

**Learning** (as :mod:`~retentionrl.agents.dqn`, the training loop's replay is not used): ``observe`` turns each
step's B x K shown items into pair samples ``(user, item, f_ua, r (T,))`` — ``f_ua`` from the env's pair table
(``StepOutput.slate_ua``; the env needs ``ua_counts: true``) — in the agent's own buffer; from ``learning_starts``
samples on, ``updates_per_step`` updates of ``batch_size`` samples per step. Exploration: epsilon-greedy rows
(uniformly random scores), epsilon decaying linearly over ``eps_decay_steps`` updates.

The gift tower's assistance network (two layers on the user and author embeddings) predicts whether this
interaction carries a gift; KuaiRand has no gift label, so it is off there and tested on a synthetic label.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import Agent
from retentionrl.config import from_dict
from retentionrl.data.schema import BEHAVIOURS, UA_KINDS
from retentionrl.data.ua_pairs import asa_next, author_items
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import soft_update
from retentionrl.nets.encoders import FeatureEncoder, mlp
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, StepOutput

#: The towers a simulator's responses can train: the reward of each is the shown item's own response.
TASKS: tuple[str, ...] = ("click", "watch_time", "follow", "long_view", "like")
NU = len(UA_KINDS)

@dataclass
class LIVConfig:
    """Table 1's hyper-parameters: γ 0.9, τ 0.005, lr 1e-3 (critics and embeddings), batch 1024, hidden [64, 64],
    embedding 32. The rest is this implementation's (exploration and replay as DQN's)."""

    tasks: list[str] = field(default_factory=lambda: ["click", "watch_time", "follow"])
    score: dict[str, float] = field(default_factory=lambda: {"watch_time": 1.0})  # towers' weights when ranking
    gamma: float = 0.9
    tau: float = 0.005
    lr: float = 1e-3
    batch_size: int = 1024
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    embed_dim: int = 32
    huber_delta: float = 1.0
    auxiliary: bool = True  # the auxiliary reward head r̂ (w/o SL: Q = γ V̂ alone, no supervised term)
    updates_per_step: int = 1
    learning_starts: int = 5000  # pair samples in the buffer before the first update
    buffer_size: int = 500_000  # pair samples
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 1000  # updates over which epsilon goes linearly from eps_start to eps_end
    grad_clip: float | None = 10.0


class LIVTower(nn.Module):
    """``H (B, F) -> (r̂ (B,), V̂ (B, 2))`` for one task; ``q = r̂ + γ V̂`` (B, 2)."""

    def __init__(self, in_dim: int, hidden: list[int], auxiliary: bool) -> None:
        super().__init__()
        self.reward = mlp([in_dim, *hidden, 1]) if auxiliary else None
        self.values = nn.ModuleList(mlp([in_dim, *hidden, 1]) for _ in range(2))

    def forward(self, h: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
        """(r̂ (B,) — zeros without the auxiliary head —, Q (B, 2))."""
        v = torch.cat([net(h) for net in self.values], dim=-1)  # (B, 2)
        r_hat = self.reward(h)[..., 0] if self.reward is not None else v.new_zeros(v.shape[:-1])
        return r_hat, r_hat[..., None] + gamma * v


def liv_target(q_next: Tensor, reward: Tensor, gamma: float, valid: Tensor | None = None) -> Tensor:
    """Eq. 7 with the clipped double Q of Eq. 5: ``y = r + γ max_j min_k Q'_k(Ĥ'_j)``.

    q_next: (B, J, 2) the target towers' two Q values of the successor state with each of the author's J items;
    reward: (B,); valid: (B, J) False for padding (authors with fewer items). Returns (B,)."""
    best = q_next.min(dim=-1).values  # (B, J)
    if valid is not None:
        best = best.masked_fill(~valid, float("-inf"))
    return reward + gamma * best.max(dim=-1).values


def tower_loss(r_hat: Tensor, q: Tensor, reward: Tensor, target: Tensor, delta: float, auxiliary: bool) -> Tensor:
    """Eq. 9: ``huber(r̂, r) + Σ_k huber(Q_k, y)`` (batch means); r_hat, reward, target (B,), q (B, 2)."""
    loss = sum(nn.functional.huber_loss(q[:, k], target, delta=delta) for k in range(q.shape[1]))
    if auxiliary:
        loss = loss + nn.functional.huber_loss(r_hat, reward, delta=delta)
    return loss


class GiftAssistance(nn.Module):
    """Two fully connected layers on the user and author embeddings -> the logit that this interaction gifts."""

    def __init__(self, embed_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = mlp([2 * embed_dim, hidden, 1])

    def forward(self, h_user: Tensor, h_author: Tensor) -> Tensor:
        """(B, E), (B, E) -> (B,) logits."""
        return self.net(torch.cat([h_user, h_author], dim=-1))[..., 0]


def total_loss(tower_losses: dict[str, Tensor], gift_logit: Tensor | None = None, gift: Tensor | None = None) -> Tensor:
    """Eq. 10: the towers' losses summed, plus the gift assistance BCE when there is a gift label."""
    loss = sum(tower_losses.values())
    if gift_logit is not None and gift is not None:
        loss = loss + nn.functional.binary_cross_entropy_with_logits(gift_logit, gift.float())
    return loss


def pair_rewards(tasks: list[str], responses: Tensor, watch: Tensor) -> Tensor:
    """(..., T) each task's reward of a shown item from its responses (..., 7) and watch seconds (...)."""
    cols = [torch.log1p(watch) if t == "watch_time" else responses[..., BEHAVIOURS.index(t)] for t in tasks]
    return torch.stack(cols, -1)


def asa_labels(responses: Tensor) -> Tensor:
    """(..., 5) the counted kinds (exposure = 1, click, long view, like, follow) of responses (..., 7)."""
    kinds = [responses[..., BEHAVIOURS.index(k)] for k in UA_KINDS[1:]]
    return torch.stack([torch.ones_like(kinds[0]), *kinds], -1)


class UAEmbedding(nn.Module):
    """The shared embedding layer: ``H = concat(h_u, h_a, h_ua)`` (..., 3E) of (user, item, pair counts).

    User and item feature tables and the item -> author code map are non-persistent buffers (the simulator's)."""

    def __init__(self, sim, author: Tensor, n_authors: int, dim: int) -> None:
        super().__init__()
        resp = sim.response
        for name, t in (("user_cat", resp.user_cat), ("user_num", resp.user_num), ("item_cat", resp.item_cat),
                        ("item_num", resp.item_num), ("author", author)):
            self.register_buffer(name, t.clone(), persistent=False)
        self.user = FeatureEncoder(list(sim.meta["user_cardinalities"]), resp.user_num.shape[1], dim)
        self.item = FeatureEncoder(list(sim.meta["item_cardinalities"]), resp.item_num.shape[1], dim)
        self.item_id = nn.Embedding(resp.item_cat.shape[0], dim)
        self.author_id = nn.Embedding(n_authors, dim)
        for e in (self.item_id, self.author_id):
            nn.init.normal_(e.weight, std=0.05)
        self.pair = nn.Linear(NU, dim)

    def profile(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """The profile fields (M, Fc), (M, Fn) of simulator users (training samples store user ids)."""
        return self.user_cat[users], self.user_num[users]

    def forward(self, ucat: Tensor, unum: Tensor, items: Tensor, counts: Tensor) -> Tensor:
        """profile (M, Fc) codes and (M, Fn) numbers, items (M, *J), counts (M, *J, 5) -> H (M, *J, 3E). The
        profile comes with the observation (``obs.profile_cat`` / ``profile_num``), so a served user need not be
        one of the simulator's."""
        h_u = self.user(ucat, unum)
        h_u = h_u.view(h_u.shape[0], *([1] * (items.dim() - 1)), -1).expand(*items.shape, -1)
        if items.numel() > self.item_cat.shape[0]:  # many rows (scoring candidates): embed the catalogue once
            h_a = self.items()[items]
        else:
            h_a = self.items(items)
        return torch.cat([h_u, h_a, self.pair(torch.log1p(counts))], -1)

    def items(self, items: Tensor | None = None) -> Tensor:
        """h_a (..., E) of ``items`` (None: the whole catalogue, (N, E))."""
        if items is None:
            return self.item(self.item_cat, self.item_num) + self.item_id.weight + self.author_id(self.author)
        return self.item(self.item_cat[items], self.item_num[items]) + self.item_id(items) + self.author_id(self.author[items])


class LIVNets(nn.Module):
    """The embedding layer and one :class:`LIVTower` per task: ``q(users, items, counts) -> (r̂, Q)``."""

    def __init__(self, sim, author: Tensor, n_authors: int, cfg: LIVConfig) -> None:
        super().__init__()
        self.embed = UAEmbedding(sim, author, n_authors, cfg.embed_dim)
        self.towers = nn.ModuleDict({t: LIVTower(3 * cfg.embed_dim, cfg.hidden, cfg.auxiliary) for t in cfg.tasks})

    def forward(self, ucat: Tensor, unum: Tensor, items: Tensor, counts: Tensor, gamma: float,
                tasks: list[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """{task: (r̂ (M, *J), Q (M, *J, 2))} for ``tasks`` (None: every tower); the inputs as UAEmbedding's."""
        h = self.embed(ucat, unum, items, counts)
        return {t: self.towers[t](h, gamma) for t in (tasks or list(self.towers))}


class RLIVUA(Agent):
    action_mode = "items"
    learns = False  # learns in observe() from its own pair samples (module docstring)

    def __init__(self, sim, cfg: LIVConfig, seed: int = 0) -> None:
        if not cfg.tasks or len(set(cfg.tasks)) != len(cfg.tasks) or set(cfg.tasks) - set(TASKS):
            raise RetentionRLError(f"rliv_ua: tasks must be distinct names among {', '.join(TASKS)}, got {cfg.tasks}")
        if not cfg.score or set(cfg.score) - set(cfg.tasks):
            raise RetentionRLError(f"rliv_ua: score must weight some of the tasks {cfg.tasks}, got {cfg.score}")
        if cfg.batch_size < 1 or cfg.buffer_size < cfg.batch_size or cfg.updates_per_step < 0:
            raise RetentionRLError("rliv_ua: batch_size >= 1, buffer_size >= batch_size, updates_per_step >= 0")
        torch.manual_seed(seed)
        self.cfg, self.seed, self.batch_size = cfg, seed, cfg.batch_size
        raw = sim.item_author.numpy()
        authors, offsets, items = author_items(raw)
        code = torch.full((len(raw),), len(authors), dtype=torch.long)  # unknown author: a code of its own
        for k in range(len(authors)):  # once, at construction (A ~ 5k)
            code[items[offsets[k]:offsets[k + 1]]] = k
        self.author, J = code, max(1, int((offsets[1:] - offsets[:-1]).max(initial=1)))
        # (A + 1, J) each author's items, padded with the author's first item; an unknown author's items are alone
        self.author_items = torch.zeros(len(authors) + 1, J, dtype=torch.long)
        self.author_valid = torch.zeros(len(authors) + 1, J, dtype=torch.bool)
        for k in range(len(authors)):
            its = torch.as_tensor(items[offsets[k]:offsets[k + 1]])
            self.author_items[k] = its[0]
            self.author_items[k, : len(its)], self.author_valid[k, : len(its)] = its, True
        self.net = LIVNets(sim, code, len(authors) + 1, cfg)
        self.net_t = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = adam(self.net.parameters(), cfg.lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        S, T = cfg.buffer_size, len(cfg.tasks)
        self.buf = {"user": torch.zeros(S, dtype=torch.long), "item": torch.zeros(S, dtype=torch.long),
                    "counts": torch.zeros(S, NU), "labels": torch.zeros(S, NU), "reward": torch.zeros(S, T)}
        self.n_added, self.n_updates = 0, 0

    # --- acting ----------------------------------------------------------------------------------------------
    def epsilon(self) -> float:
        c = self.cfg
        frac = 1.0 if c.eps_decay_steps == 0 else min(1.0, self.n_updates / c.eps_decay_steps)
        return c.eps_start + frac * (c.eps_end - c.eps_start)

    @torch.no_grad()
    def liv(self, ucat: Tensor, unum: Tensor, items: Tensor, counts: Tensor) -> Tensor:
        """(M, *J) the ranking score ``Σ_l score[l] · min_k Q_l,k`` of pairs (profiles (M, Fc), (M, Fn), items
        (M, *J), counts (M, *J, 5))."""
        out = self.net(ucat, unum, items, counts, self.cfg.gamma, list(self.cfg.score))
        return sum(w * out[t][1].min(-1).values for t, w in self.cfg.score.items())

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, C) LIV scores of ``obs.candidates`` ((C,) shared or (B, C) per row) with their pair counts."""
        if obs.ua_counts is None:
            raise RetentionRLError("rliv_ua scores user-author pairs: the environment must keep their counts "
                                   "(env: ua_counts: true)")
        cand = obs.candidates if obs.candidates.dim() == 2 else obs.candidates.expand(obs.user.shape[0], -1)
        scores = self.liv(obs.profile_cat, obs.profile_num, cand, obs.ua_counts)
        if explore:
            rand_rows = torch.rand(scores.shape[0], generator=self.gen) < self.epsilon()
            if n := int(rand_rows.sum()):
                scores[rand_rows] = torch.rand(n, scores.shape[1], generator=self.gen)
        return scores

    # --- learning --------------------------------------------------------------------------------------------
    def add_pairs(self, users: Tensor, items: Tensor, counts: Tensor, responses: Tensor, watch: Tensor) -> None:
        """Store pair samples: users, items (M,), counts before the exposure (M, 5), responses (M, 7), watch (M,)."""
        rows = torch.arange(self.n_added, self.n_added + len(users)) % self.cfg.buffer_size
        b = self.buf
        b["user"][rows], b["item"][rows], b["counts"][rows] = users, items, counts
        b["labels"][rows] = asa_labels(responses)
        b["reward"][rows] = pair_rewards(self.cfg.tasks, responses, watch)
        self.n_added += len(users)

    def observe(self, obs: Obs, action: Tensor, out: StepOutput) -> dict[str, float]:
        """The step's B x K shown items become pair samples; then ``updates_per_step`` updates."""
        if out.slate_ua is None:
            raise RetentionRLError("rliv_ua learns from user-author pair counts: set the environment's ua_counts: true")
        B, K = out.slate.shape
        self.add_pairs(out.users[:, None].expand(B, K).reshape(-1), out.slate.reshape(-1),
                       out.slate_ua.reshape(-1, NU), out.responses.reshape(-1, out.responses.shape[-1]),
                       out.watch_time.reshape(-1))
        info: dict[str, float] = {}
        if self.n_added >= self.cfg.learning_starts:
            for _ in range(self.cfg.updates_per_step):
                info = self.update(self.sample(self.cfg.batch_size))
        return info

    def sample(self, n: int) -> dict[str, Tensor]:
        idx = torch.randint(min(self.n_added, self.cfg.buffer_size), (n,), generator=self.gen)
        return {k: v[idx] for k, v in self.buf.items()}

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One step on every tower (Eq. 9 summed, Eq. 10) from pair samples."""
        cfg, users, items, r = self.cfg, batch["user"], batch["item"], batch["reward"]
        with torch.no_grad():  # ASA successor with each of the author's items j, through the target networks
            a = self.author[items]
            valid = self.author_valid[a]  # (M, J)
            m, j = valid.nonzero(as_tuple=True)  # only real items (authors average 1.1 of J = 6 slots)
            nxt = asa_next(batch["counts"], batch["labels"])[m]
            ucat, unum = self.net.embed.profile(users)
            q_valid = self.net_t(ucat[m], unum[m], self.author_items[a][m, j], nxt, cfg.gamma)
            q_next = {}
            for t, (_, q) in q_valid.items():  # back to (M, J, 2); padding is masked by liv_target
                q_next[t] = q.new_zeros(*valid.shape, 2).index_put_((m, j), q)
        out = self.net(ucat, unum, items, batch["counts"], cfg.gamma)
        losses, info = {}, {}
        for j, t in enumerate(cfg.tasks):
            y = liv_target(q_next[t], r[:, j], cfg.gamma, valid)
            r_hat, q = out[t]
            losses[t] = tower_loss(r_hat, q, r[:, j], y, cfg.huber_delta, cfg.auxiliary)
            info[f"q_{t}"] = float(q.detach().mean())
        loss = total_loss(losses)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        soft_update(self.net, self.net_t, cfg.tau)
        self.n_updates += 1
        return {"loss": float(loss.detach()), **info, "epsilon": self.epsilon()}

    # --- persistence -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, target, optimiser, generator, counters and the filled part of the pair buffer."""
        n = min(self.n_added, self.cfg.buffer_size)
        return {"net": self.net.state_dict(), "net_t": self.net_t.state_dict(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(), "n_added": self.n_added, "n_updates": self.n_updates,
                "buffer": {k: v[:n].clone() for k, v in self.buf.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net_t.load_state_dict(state["net_t"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.n_added, self.n_updates = int(state["n_added"]), int(state["n_updates"])
        for k, v in state["buffer"].items():
            self.buf[k][: len(v)] = v


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> RLIVUA:
    """Registry entry: ``cfg`` holds :class:`LIVConfig` fields (unknown keys are errors)."""
    return RLIVUA(sim, from_dict(LIVConfig, cfg, "agent"), seed=seed)
