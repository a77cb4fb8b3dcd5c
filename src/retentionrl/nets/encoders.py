"""Encoders shared by the simulator's response model and by the agents.

* :class:`FeatureEncoder` — categorical embeddings + numeric projection of a user or item feature table.
* :class:`HistoryTransformer` — causal self-attention over ``[user token, h_1..h_n]`` where every position sees
  the user token and at most ``window`` previous exposures, with an ALiBi recency bias instead of absolute
  positions: training on long windows and inference on the last ``window`` exposures then compute the same
  function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from retentionrl.data.schema import FeatureTable


@dataclass
class FeatureTensors:
    """A :class:`FeatureTable` as tensors. ``cat``: (N, Fc) long codes; ``num``: (N, Fn) standardised floats."""

    cat: Tensor
    num: Tensor
    cardinalities: list[int]

    @classmethod
    def from_table(cls, table: FeatureTable) -> "FeatureTensors":
        n = len(table)
        cats = list(table.categorical)
        cat = (
            torch.tensor(table.frame[cats].to_numpy(np.int64)) if cats else torch.zeros(n, 0, dtype=torch.long)
        )
        if table.numeric:
            x = table.frame[table.numeric].to_numpy(np.float64, copy=True)
            # Counts and sizes are heavy-tailed: log-compress non-negative columns before standardising.
            nonneg = (x >= 0).all(axis=0)
            x[:, nonneg] = np.log1p(x[:, nonneg])
            x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
            num = torch.as_tensor(x, dtype=torch.float32)
        else:
            num = torch.zeros(n, 0)
        return cls(cat=cat, num=num, cardinalities=[table.categorical[c] for c in cats])

    def state_dict(self) -> dict[str, Tensor]:
        return {"cat": self.cat, "num": self.num, "cardinalities": torch.tensor(self.cardinalities, dtype=torch.long)}

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> "FeatureTensors":
        return cls(cat=d["cat"], num=d["num"], cardinalities=[int(c) for c in d["cardinalities"]])


class FeatureEncoder(nn.Module):
    """(N, Fc) codes + (N, Fn) numbers -> (N, dim): sum of per-column embeddings and a numeric projection."""

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int, max_embed: int = 4096) -> None:
        super().__init__()
        # Very high-cardinality columns (author, music id) share hashed buckets to keep the model small.
        self.buckets = [min(c, max_embed) for c in cardinalities]
        self.embeds = nn.ModuleList(nn.Embedding(b, dim) for b in self.buckets)
        self.numeric = nn.Linear(n_numeric, dim) if n_numeric else None
        self.norm = nn.LayerNorm(dim)
        for e in self.embeds:
            nn.init.normal_(e.weight, std=0.05)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        out = 0.0
        for j, emb in enumerate(self.embeds):
            out = out + emb(cat[..., j] % self.buckets[j])
        if self.numeric is not None:
            out = out + self.numeric(num)
        if isinstance(out, float):
            raise ValueError("FeatureEncoder needs at least one feature column")
        return self.norm(out)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x: (B, L, D); bias: (B or 1, heads, L, L) additive attention bias (-inf = masked)."""
        b, l, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, l, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class HistoryTransformer(nn.Module):
    """Causal transformer over ``[user, h_1..h_n]`` with a sliding window of ``window`` exposures.

    Token of exposure j: item encoding + projection of its behaviour vector (7 zeros/ones) + watch feature.
    """

    def __init__(self, dim: int, n_behaviours: int, window: int, layers: int = 2, heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.resp = nn.Linear(n_behaviours + 1, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # ALiBi slopes: head h penalises distance with slope 2^-(h+1) (in units of one exposure).
        self.register_buffer("slopes", torch.tensor([2.0 ** -(h + 1) for h in range(heads)]), persistent=False)

    def attention_bias(self, length: int, pad: Tensor | None) -> Tensor:
        """(B or 1, heads, L, L) bias for L = 1 + n tokens; ``pad``: (B, L) True where a token is padding."""
        idx = torch.arange(length, device=self.slopes.device)
        dist = (idx[:, None] - idx[None, :]).float()  # query - key
        allowed = (dist >= 0) & (dist < self.window)  # a query token sees itself and window-1 earlier ones
        allowed[:, 0] = True  # everyone sees the user token
        bias = -self.slopes[:, None, None] * dist.clamp(min=0)[None]
        bias[:, :, 0] = 0.0
        bias = bias.masked_fill(~allowed[None], float("-inf"))[None]  # (1, H, L, L)
        if pad is not None:
            bias = bias.masked_fill(pad[:, None, None, :], float("-inf"))
        return bias

    def forward(self, user: Tensor, items: Tensor, responses: Tensor, pad: Tensor | None = None) -> Tensor:
        """user: (B, D); items: (B, n, D) item encodings; responses: (B, n, n_behaviours + 1);
        pad: (B, n) True for padding. Returns (B, 1 + n, D): output j is the state after exposures < j+1."""
        x = torch.cat([user[:, None], items + self.resp(responses)], dim=1)
        full_pad = None
        if pad is not None:
            full_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        bias = self.attention_bias(x.shape[1], full_pad)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.norm(x)


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, out_act: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of the given sizes with ``act`` between them (CleanRL style)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)

