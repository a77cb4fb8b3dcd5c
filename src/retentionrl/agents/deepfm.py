"""DeepFM (Guo et al., IJCAI'17): RLIV-UA's "RankingModel" — a click model on user and item fields, used greedily.

Fields: every categorical user and item column of the bundle's feature tables (high-cardinality ones such as the
author id hashed into ``max_buckets`` codes, as the simulator's encoders do), the item id, and every numeric
column as a field whose embedding is scaled by its value. No user id: the evaluation users are held out, their
id embeddings would be untrained noise. With ``e_f`` (M, F, k) the fields' embeddings and ``w_f`` their
first-order weights::

    logit = b + Σ_f w_f + ½ Σ_d [(Σ_f e_fd)² − Σ_f e_fd²] + MLP(concat_f e_f)          (FM + deep part, shared e)

Trained with BCE on the clicks of logged slates (``slate`` (M, K), ``responses`` (M, K, 7) of
:func:`~retentionrl.training.offline.generate_logs`, as DIN), or on a real log's exposures (``fit_pairs``: the
held-out-day AUC beside the response model's, ``benchmarks/deepfm_auc.py``). As a policy it is item-level: ``act``
returns the click logits of the candidates ((C,) shared or (B, C) per row); the env shows the top K.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import TorchAgent
from retentionrl.config import from_dict
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import mlp
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs


@dataclass
class DeepFMConfig:
    dim: int = 16  # k: the fields' embedding width
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # the deep part
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256  # logged requests per update (each gives K exposures)
    target: str = "click"
    max_buckets: int = 4096  # codes per categorical column (larger ones are hashed by modulo)


class DeepFMNet(nn.Module):
    """``(users (M,), items (M, *J)) -> logits (M, *J)`` from the simulator's feature tables (non-persistent)."""

    def __init__(self, sim, cfg: DeepFMConfig) -> None:
        super().__init__()
        r = sim.response
        for name, t in (("user_cat", r.user_cat), ("user_num", r.user_num), ("item_cat", r.item_cat),
                        ("item_num", r.item_num)):
            self.register_buffer(name, t.clone(), persistent=False)
        cards = [*sim.meta["user_cardinalities"], *sim.meta["item_cardinalities"], sim.n_items]  # + the item id
        buckets = [min(int(c), cfg.max_buckets) for c in cards]
        self.register_buffer("sizes", torch.tensor(buckets), persistent=False)
        self.register_buffer("offsets", torch.tensor([0, *buckets[:-1]]).cumsum(0), persistent=False)
        self.n_num = r.user_num.shape[1] + r.item_num.shape[1]
        n_fields = len(buckets) + self.n_num
        self.embed = nn.Embedding(sum(buckets), cfg.dim)
        self.first = nn.Embedding(sum(buckets), 1)
        self.num_embed = nn.Parameter(torch.randn(self.n_num, cfg.dim) * 0.05)
        self.num_first = nn.Parameter(torch.zeros(self.n_num))
        self.bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.first.weight)
        self.deep = mlp([n_fields * cfg.dim, *cfg.hidden, 1])

    def profile(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """The profile fields (M, Fc), (M, Fn) of simulator / log users."""
        return self.user_cat[users], self.user_num[users]

    def forward(self, ucat: Tensor, unum: Tensor, items: Tensor) -> Tensor:
        """profile (M, Fc) codes and (M, Fn) numbers (the observation's, so a served user need not be in the
        tables), items (M, *J) -> logits (M, *J)."""
        lead = (-1, *([1] * (items.dim() - 1)))
        ucat = ucat.view(*lead, ucat.shape[-1]).expand(*items.shape, -1)
        unum = unum.view(*lead, unum.shape[-1]).expand(*items.shape, -1)
        codes = torch.cat([ucat, self.item_cat[items], items[..., None]], -1)  # (M, *J, Fc)
        codes = codes % self.sizes + self.offsets
        x = torch.cat([unum, self.item_num[items]], -1)  # (M, *J, Fn)
        e = torch.cat([self.embed(codes), x[..., None] * self.num_embed], -2)  # (M, *J, F, k)
        first = self.first(codes).sum((-2, -1)) + (x * self.num_first).sum(-1)
        s = e.sum(-2)
        fm = 0.5 * (s.square() - e.square().sum(-2)).sum(-1)
        return self.bias + first + fm + self.deep(e.flatten(-2))[..., 0]


class DeepFM(TorchAgent):
    action_mode = "items"
    learns = True
    _STATE = ("net", "opt")

    def __init__(self, sim, cfg: DeepFMConfig, seed: int = 0) -> None:
        if cfg.target not in BEHAVIOURS:
            raise RetentionRLError(f"deepfm: target must be one of {', '.join(BEHAVIOURS)}, got {cfg.target!r}")
        torch.manual_seed(seed)
        self.cfg, self.batch_size, self.target = cfg, cfg.batch_size, BEHAVIOURS.index(cfg.target)
        self.net = DeepFMNet(sim, cfg)
        self.opt = adam(self.net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, C) click logits of the candidates."""
        cand = obs.candidates if obs.candidates.dim() == 2 else obs.candidates.expand(obs.user.shape[0], -1)
        return self.net.eval()(obs.profile_cat, obs.profile_num, cand)

    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        if "slate" not in logs or "responses" not in logs:
            raise RetentionRLError(f"deepfm learns from logged slates: {source} have no 'slate' / 'responses'")
        y = logs["responses"][..., self.target]
        if y.numel() == 0 or bool((y == y.flatten()[0]).all()):
            raise RetentionRLError(f"deepfm: target '{self.cfg.target}' takes one value over the {y.numel()} "
                                   f"exposures in {source}: nothing to rank by")

    def fit_pairs(self, users: Tensor, items: Tensor, y: Tensor) -> float:
        """One BCE step on exposures (users, items, 0/1 labels, all (M, ...)); returns the loss."""
        self.net.train()
        loss = nn.functional.binary_cross_entropy_with_logits(self.net(*self.net.profile(users), items), y.float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.n_updates += 1
        return float(loss.detach())

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One step on logged slates: ``user`` (M,), ``slate`` (M, K), ``responses`` (M, K, 7)."""
        return {"bce": self.fit_pairs(batch["user"], batch["slate"], batch["responses"][..., self.target])}


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> DeepFM:
    """Registry entry: ``cfg`` holds :class:`DeepFMConfig` fields (unknown keys are errors)."""
    return DeepFM(sim, from_dict(DeepFMConfig, cfg, "agent"), seed=seed)
