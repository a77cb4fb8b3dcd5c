"""DIN, Deep Interest Network (Zhou et al., KDD'18): a supervised click model used greedily at item level.

For a user with history tokens ``h_1..h_H`` and a target item ``t``::

    a_j   = MLP_att([h_j, t, h_j - t, h_j * t])         (no softmax: DIN keeps the intensity of interest)
    u(t)  = Σ_j a_j h_j                                  (padding slots have a_j = 0)
    logit = MLP([p, u(t), t, u(t) * t, p * t])              (p = profile(user); products as in the DIN code)

Item embedding ``e(i) = id_embedding(i) + FeatureEncoder(item_cat[i], item_num[i])`` (the item feature tables are
copied from the simulator at build); history token ``h_j = e(item_j) + W_r resp_j`` (the behaviours the user showed
on that exposure, so non-clicked exposures still say something). Trained offline with BCE on the clicks of the
logged slates (``slate`` (M, K), ``responses`` (M, K, 7) from :func:`retentionrl.training.offline.generate_logs`).
As a policy it is item-level (``action_mode = "items"``) and greedy: ``act`` returns the (B, C) click logits of
every candidate, the environment shows the top K.

Cost of scoring every candidate. The attention MLP's first layer is linear in the concatenation, so
``W [h, t, h-t, h*t] + b = (W_h + W_d) h + b + (W_t - W_d) t + W_p (h * t)``, and the whole pre-activation of
slot j, unit f, target k is one inner product of augmented vectors::

    g[j, f] = [W_p[f] * h_j,  e_f,  a_jf]      a_jf = ((W_h + W_d) h_j + b)_f        (D + F + 1)
    τ[k]    = [t_k,  (W_t - W_d) t_k,  1]                                             (D + F + 1)

so the (B, H, F, K) pre-activations come out of one batched GEMM ``(B, H*F, D+F+1) @ (B, D+F+1, K)`` and are
only ReLU'd in place and reduced over F: the largest tensor is written once and read twice (separate
additions of the per-slot and per-target terms would cost two more passes over it). Scoring B users against C candidates costs ``O(B·H·C·F·(D+F))`` multiply-adds for the attention plus
the output MLP per pair, e.g. 256 × 20 × 6.2k × 16 × 49 ≈ 2.5·10¹⁰ on KuaiRand. :meth:`DIN.act` scores
blocks of ``b`` users × ``c`` candidates with ``b·H·F·c ≤ chunk_elems``, so memory stays bounded whatever C
is and the block stays cache-sized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import TorchAgent
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import FeatureEncoder, mlp
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class DINConfig:
    dim: int = 32  # D: item / profile embedding width
    att_hidden: list[int] = field(default_factory=lambda: [16])  # attention MLP widths (the first one is F)
    hidden: list[int] = field(default_factory=lambda: [64, 32])  # output MLP widths
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256  # logged requests per update (each gives K exposures)
    target: str = "click"  # the behaviour the model predicts
    max_history: int | None = None  # attend to the last N exposures only (None: the whole observed window)
    chunk_elems: int = 1 << 22  # bound on b·H·F·c per block when scoring many candidates (module docstring)
    item_ids: bool = True  # learn an id embedding per item on top of the item features (off: features only)
    explore_noise: float = 0.0  # std of Gaussian noise on the scores when act(explore=True)


class DINNet(nn.Module):
    """The click model. Item feature tables are non-persistent buffers (they come from the simulator)."""

    def __init__(self, user_cards: list[int], n_user_num: int, item_cat: Tensor, item_num: Tensor,
                 item_cards: list[int], dim: int, att_hidden: list[int], hidden: list[int],
                 n_behaviours: int = len(BEHAVIOURS), item_ids: bool = True) -> None:
        super().__init__()
        if not att_hidden:
            raise RetentionRLError("din: att_hidden needs at least one layer width")
        self.register_buffer("item_cat", item_cat.clone(), persistent=False)
        self.register_buffer("item_num", item_num.clone(), persistent=False)
        self.dim = dim
        self.item_id = nn.Embedding(item_cat.shape[0], dim) if item_ids else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.05)
        self.item_feat = FeatureEncoder(item_cards, item_num.shape[1], dim)
        self.profile = FeatureEncoder(user_cards, n_user_num, dim)
        self.resp = nn.Linear(n_behaviours + 1, dim)
        self.att1 = nn.Linear(4 * dim, att_hidden[0])  # on [h, t, h - t, h * t], applied factorised
        self.att_rest = mlp([*att_hidden, 1])
        self.out = mlp([5 * dim, *hidden, 1])

    def item_table(self) -> Tensor:
        """(N, D) embeddings of every item (cheap: N rows of a few lookups)."""
        feats = self.item_feat(self.item_cat, self.item_num)
        return feats if self.item_id is None else feats + self.item_id.weight

    def user_side(self, obs: Obs, table: Tensor, max_history: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """-> profile (B, D), history tokens (B, H, D), valid-slot mask (B, H) float."""
        items, resp, pad = obs.hist_items, obs.hist_resp, obs.hist_pad
        if max_history is not None:
            items, resp, pad = items[:, -max_history:], resp[:, -max_history:], pad[:, -max_history:]
        p = self.profile(obs.profile_cat, obs.profile_num)
        h = table[items] + self.resp(resp)
        return p, h, (~pad).float()

    def history_operand(self, h: Tensor) -> Tensor:
        """Augmented left operand g (B, H*F, D+F+1) of history h (B, H, D) (module docstring)."""
        B, H, D = h.shape
        W_h, _, W_d, W_p = self.att1.weight.split(D, dim=1)  # each (F, D)
        F = W_h.shape[0]
        a = h @ (W_h + W_d).T + self.att1.bias  # (B, H, F)
        eye = torch.eye(F, dtype=h.dtype).expand(B, H, F, F)
        return torch.cat([h[:, :, None, :] * W_p, eye, a[..., None]], dim=3).view(B, H * F, D + F + 1)

    def target_operand(self, t: Tensor) -> Tensor:
        """Augmented right operand tau (..., K, D+F+1) of targets t (..., K, D) (module docstring)."""
        _, W_t, W_d, _ = self.att1.weight.split(t.shape[-1], dim=1)
        return torch.cat([t, t @ (W_t - W_d).T, t.new_ones(*t.shape[:-1], 1)], dim=-1)

    def score(self, p: Tensor, h: Tensor, mask: Tensor, t: Tensor, g: Tensor | None = None,
              tau: Tensor | None = None) -> Tensor:
        """Click logits (B, K) of targets t (B, K, D) (may be an expanded shared tensor) for users with profile
        p (B, D), history h (B, H, D) and mask (B, H). ``g`` / ``tau``: :meth:`history_operand` of h and
        :meth:`target_operand` of t when the caller already has them (:meth:`DIN.act` reuses them across blocks)."""
        B, H, _ = h.shape
        K = t.shape[1]
        F = self.att1.out_features
        g = self.history_operand(h) if g is None else g
        tau = self.target_operand(t) if tau is None else tau
        z = torch.bmm(g, tau.transpose(1, 2)).view(B, H, F, K)  # pre-activations
        z = torch.relu(z) if torch.is_grad_enabled() else z.relu_()  # in place when scoring many candidates
        if len(self.att_rest) == 1:  # one linear layer to the weight: a batched GEMV over F
            # Spelled as bmm: ``weight[0] @ z`` takes a path that copies z transposed (the profiler put that
            # copy at 23-44% of act's time).
            v = self.att_rest[0].weight.expand(B * H, 1, F)
            w = torch.bmm(v, z.view(B * H, F, K)).view(B, H, K) + self.att_rest[0].bias  # (B, H, K)
        else:
            w = self.att_rest(z.transpose(2, 3)).squeeze(-1)
        w = w * mask[:, :, None]  # (B, H, K)
        u = torch.bmm(w.transpose(1, 2), h)  # (B, K, D)
        return self.head(p, u, t)

    def head(self, p: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """Output MLP on ``[p, u, t, u * t, p * t]`` -> (B, K) logits; p (B, D), u and t (B, K, D). The products
        follow the DIN reference code (``item_eb * item_his_eb_sum``) and give the user-item cross directly."""
        pk = p[:, None, :].expand(-1, t.shape[1], -1)
        return self.out(torch.cat([pk, u, t, u * t, pk * t], dim=2)).squeeze(-1)

    def score_naive(self, p: Tensor, h: Tensor, mask: Tensor, t: Tensor) -> Tensor:
        """Same as :meth:`score` with the concatenation spelled out, O(B·H·K·4D) memory (tests / reference)."""
        K = t.shape[1]
        hh = h[:, :, None, :].expand(-1, -1, K, -1)
        tt = t[:, None, :, :].expand_as(hh)
        z = torch.relu(self.att1(torch.cat([hh, tt, hh - tt, hh * tt], dim=-1)))
        w = self.att_rest(z).squeeze(-1) * mask[:, :, None]
        return self.head(p, torch.einsum("bhk,bhd->bkd", w, h), t)


class DIN(TorchAgent):
    _STATE = ("net", "opt")
    """DIN as a greedy item-level policy; ``update`` = :meth:`fit_batch` (supervised, offline)."""

    action_mode = "items"
    learns = True

    def __init__(self, sim, cfg: DINConfig, seed: int = 0) -> None:
        if cfg.target not in BEHAVIOURS:
            raise RetentionRLError(f"din: target '{cfg.target}' is not a behaviour ({', '.join(BEHAVIOURS)})")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        resp = sim.response
        self.net = DINNet(list(sim.meta["user_cardinalities"]), int(resp.user_num.shape[1]), resp.item_cat,
                          resp.item_num, list(sim.meta["item_cardinalities"]), cfg.dim, cfg.att_hidden, cfg.hidden,
                          item_ids=cfg.item_ids)
        self.opt = adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.target = BEHAVIOURS.index(cfg.target)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    def predict(self, obs: Obs, items: Tensor) -> Tensor:
        """Click logits (B, K) of per-row target items (B, K) (long ids). Differentiable."""
        table = self.net.item_table()
        p, h, mask = self.net.user_side(obs, table, self.cfg.max_history)
        return self.net.score(p, h, mask, table[items])

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, C) click logits of every candidate in ``obs.candidates``, scored in blocks of users x candidates."""
        self.net.eval()
        table = self.net.item_table()
        p, h, mask = self.net.user_side(obs, table, self.cfg.max_history)
        B, H, _ = h.shape
        F = self.net.att1.out_features
        cand = table[obs.candidates]  # (C, D)
        C = cand.shape[0]
        # Blocks of b users x c candidates with b·H·F·c <= chunk_elems (cache-sized pre-activations).
        c = max(1, min(C, 512, self.cfg.chunk_elems // max(1, H * F)))
        b = max(1, min(B, self.cfg.chunk_elems // max(1, H * F * c)))
        tau = self.net.target_operand(cand)  # (C, D+F+1), once per request
        scores = torch.empty(B, C)
        for b0 in range(0, B, b):
            rows = slice(b0, b0 + b)
            nb = min(b, B - b0)
            g = self.net.history_operand(h[rows])  # once per block of users
            for s in range(0, C, c):
                scores[rows, s : s + c] = self.net.score(p[rows], h[rows], mask[rows],
                                                         cand[s : s + c].expand(nb, -1, -1), g,
                                                         tau[s : s + c].expand(nb, -1, -1))
        if explore and self.cfg.explore_noise > 0:
            scores = scores + self.cfg.explore_noise * torch.randn(scores.shape, generator=self.gen)
        return scores

    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        """A target whose logged labels are all one value teaches no ranking (MovieLens: every rating is a
        click), and BCE would still fall quietly; refuse it."""
        if "responses" not in logs:
            raise RetentionRLError(f"din: {source} have no 'responses' (use retentionrl.training.offline logs)")
        y = logs["responses"][..., self.target]
        if y.numel() == 0 or bool((y == y.flatten()[0]).all()):
            value = "empty" if y.numel() == 0 else f"all {float(y.flatten()[0]):g}"
            raise RetentionRLError(
                f"din: target '{self.cfg.target}' is {value} over the {y.numel()} exposures in {source}, so there "
                f"is nothing to rank by; choose another agent.target ({', '.join(BEHAVIOURS)})")

    def fit_batch(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One BCE step on the logged exposures: ``slate`` (M, K) long, ``responses`` (M, K, 7) and the obs fields
        (the state the request was made in)."""
        if "slate" not in batch or "responses" not in batch:
            raise RetentionRLError("din learns from logged slates: the batch needs 'slate' and 'responses' "
                                   "(use retentionrl.training.offline logs)")
        self.net.train()
        logits = self.predict(obs_from_batch(batch), batch["slate"])
        y = batch["responses"][..., self.target].float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.n_updates += 1
        return {"bce": float(loss.detach())}

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self.fit_batch(batch)


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> DIN:
    """Registry entry: ``cfg`` holds :class:`DINConfig` fields (unknown keys are errors)."""
    from retentionrl.config import from_dict

    return DIN(sim, from_dict(DINConfig, cfg, "agent"), seed=seed)
