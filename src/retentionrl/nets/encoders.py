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
            x, _ = _standardise(table)
            num = torch.as_tensor(x, dtype=torch.float32)
        else:
            num = torch.zeros(n, 0)
        return cls(cat=cat, num=num, cardinalities=[table.categorical[c] for c in cats])


def _standardise(table: FeatureTable) -> tuple[np.ndarray, list[dict]]:
    """(N, Fn) float64 standardised numeric columns and, per column, how: ``{name, fill, log1p, mean, std}``."""
    x = table.frame[table.numeric].to_numpy(np.float64, copy=True)
    # Counts and sizes are heavy-tailed: log-compress non-negative columns before standardising.
    nonneg = (x >= 0).all(axis=0)
    x[:, nonneg] = np.log1p(x[:, nonneg])
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    scales = [{"name": c, "fill": table.fills.get(c), "log1p": bool(nonneg[j]), "mean": float(mean[j]),
               "std": float(std[j])} for j, c in enumerate(table.numeric)]
    return (x - mean) / std, scales


def numeric_scales(table: FeatureTable) -> list[dict]:
    """How :meth:`FeatureTensors.from_table` maps each raw numeric column to its standardised feature, so that a
    raw value from outside the table (a served request) gets the same number: ``fill`` (the median that replaced
    missing values), ``log1p`` (applied first when the column is non-negative), then ``(x - mean) / std``."""
    return _standardise(table)[1] if table.numeric else []


def scale_numeric(raw: float | None, scale: dict) -> float:
    """One raw value -> its standardised feature under ``scale`` (an entry of :func:`numeric_scales`); None is
    missing (the column's fill). Same float64 operations as the table's, so a logged value reproduces it exactly.
    A negative value of a log-compressed column is taken as 0 (the column had none)."""
    x = np.float64(scale["fill"] if raw is None else raw)
    if scale["log1p"]:
        x = np.log1p(max(x, np.float64(0.0)))
    return float((x - np.float64(scale["mean"])) / np.float64(scale["std"]))


class FeatureEncoder(nn.Module):
    """(N, Fc) codes + (N, Fn) numbers -> (N, dim): sum of per-column embeddings and a numeric projection.

    The columns' tables are row blocks of one embedding table (column j's codes offset by the sizes of the tables
    before it), so that a lookup is one gather and its gradient one scatter, however many columns there are. The
    state dict keeps one tensor per column (``embeds.j.weight``), the layout bundles and checkpoints have always
    had, so that they load unchanged and a simulator's fingerprint (a hash of its state dict) does not depend on
    this implementation detail."""

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int, max_embed: int = 4096) -> None:
        super().__init__()
        # Very high-cardinality columns (author, music id) share hashed buckets to keep the model small.
        self.buckets = [min(c, max_embed) for c in cardinalities]
        self.register_buffer("_sizes", torch.tensor(self.buckets, dtype=torch.long), persistent=False)
        self.register_buffer("_offsets", torch.tensor([0, *self.buckets[:-1]], dtype=torch.long).cumsum(0),
                             persistent=False)
        self.table = nn.Embedding(sum(self.buckets), dim) if self.buckets else None
        self.numeric = nn.Linear(n_numeric, dim) if n_numeric else None
        self.norm = nn.LayerNorm(dim)
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.05)
        self.register_state_dict_post_hook(self._to_per_column_tables)
        self.register_load_state_dict_pre_hook(self._from_per_column_tables)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        out = self.table(cat % self._sizes + self._offsets).sum(-2) if self.table is not None else 0.0
        if self.numeric is not None:
            out = out + self.numeric(num)
        if isinstance(out, float):
            raise ValueError("FeatureEncoder needs at least one feature column")
        return self.norm(out)

    def _columns(self, prefix: str) -> list[str]:
        return [f"{prefix}embeds.{j}.weight" for j in range(len(self.buckets))]

    @staticmethod  # (torch marks a state-dict hook with an attribute, which a bound method cannot take)
    def _to_per_column_tables(module: "FeatureEncoder", state: dict, prefix: str, meta: dict) -> None:
        if module.table is not None:
            table = state.pop(f"{prefix}table.weight")
            state.update(zip(module._columns(prefix), table.split(module.buckets)))

    @staticmethod
    def _from_per_column_tables(module: "FeatureEncoder", state: dict, prefix: str, *args) -> None:
        names = module._columns(prefix)
        if names and all(k in state for k in names):
            state[f"{prefix}table.weight"] = torch.cat([state.pop(k) for k in names])


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor, past: tuple[Tensor, Tensor] | None = None, last_only: bool = False
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, Lq, D) new tokens; past: cached keys and values of earlier tokens, each (B, heads, Lp, D/heads);
        bias: (B or 1, heads, Lq, Lp + Lq). Returns the output (B, Lq, D) — only for the last token when
        ``last_only`` (the top layer of an incremental step needs no other) — and the new tokens' keys and
        values (each (B, heads, Lq, D/heads)) for the cache."""
        b, lq, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, lq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if past is None:
            att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:  # a few queries against a short cache: score the cached and the new keys separately (no copy)
            if last_only:
                q, bias, x = q[:, :, -1:], bias[:, :, -1:], x[:, -1:]
            kp, vp = past
            lp = kp.shape[2]
            scale = q.shape[-1] ** -0.5
            w = torch.softmax(torch.cat([q @ kp.transpose(-1, -2), q @ k.transpose(-1, -2)], -1) * scale + bias, -1)
            att = w[..., :lp] @ vp + w[..., lp:] @ v
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, x.shape[1], d)))
        return x + self.drop(self.ff(self.ln2(x))), (k, v)

    def at(self, x: Tensor, bias: Tensor, queries: Tensor) -> Tensor:
        """The block's output at the positions ``queries`` (Q,) only, ``forward(x, ...)[0][:, queries]``:
        x (B, L, D), bias (B or 1, heads, Q, L) -> (B, Q, D). Keys and values of every position, the query
        projection of the asked ones only (rows ``:D`` of the fused weight) and attention rows for them only
        (``einsum`` still lays k and v out head-major for its batched matmul)."""
        b, l, d = x.shape
        h, w, c = self.ln1(x), self.qkv.weight, self.qkv.bias
        kv = nn.functional.linear(h, w[d:], c[d:]).view(b, l, 2, self.heads, -1)  # (B, L, 2, heads, dh)
        q = nn.functional.linear(h[:, queries], w[:d], c[:d]).view(b, len(queries), self.heads, -1)  # (B, Q, heads, dh)
        scores = torch.einsum("bqhe,blhe->bhql", q, kv[:, :, 0]) * q.shape[-1] ** -0.5 + bias  # (B, heads, Q, L)
        att = torch.einsum("bhql,blhe->bqhe", torch.softmax(scores, -1), kv[:, :, 1]).reshape(b, -1, d)
        x = x[:, queries] + self.drop(self.out(att))
        return x + self.drop(self.ff(self.ln2(x)))


@dataclass
class HistoryCache:
    """Keys/values of the tokens a new exposure can attend to, per layer, so that appending K exposures costs
    K query tokens and no recomputation.

    Slot 0 is the user token; slots 1..W (W = window - 1) are a ring buffer of the last W exposures shared by
    all rows: the oldest exposure sits in slot ``1 + start`` and the one ``c`` places newer in
    ``1 + (start + c) % W``. Appending overwrites the oldest slots in place.
    """

    k: Tensor  # (layers, B, heads, 1 + W, D/heads)
    v: Tensor  # (layers, B, heads, 1 + W, D/heads)
    pad: Tensor  # (B, 1 + W) True = empty slot (never the user slot)
    state: Tensor  # (B, D) output at the newest token (the user token when there is no history)
    start: int = 0
    # (B, K, D) state after each exposure of the last ``extend(..., all_states=True)`` (transient: not copied by
    # ``assign`` nor saved; the learned leave model evaluates its per-exposure hazard on it).
    slate_states: Tensor | None = None

    @property
    def width(self) -> int:
        return self.k.shape[3] - 1

    def ring_slots(self, first: int, count: int) -> Tensor:
        """Slots of the exposures ``first .. first+count-1`` places after the oldest one."""
        return 1 + (self.start + first + torch.arange(count)) % self.width

    def assign(self, mask: Tensor, other: "HistoryCache") -> None:
        """Overwrite the rows of ``mask`` (B,) with ``other`` (mask.sum() rows, ``start`` 0): rotate into the ring."""
        W = self.width
        dst = torch.cat([torch.zeros(1, dtype=torch.long), self.ring_slots(0, W)])
        src = torch.cat([torch.zeros(1, dtype=torch.long), 1 + (other.start + torch.arange(W)) % W])
        for name in ("k", "v"):
            rotated = torch.empty_like(getattr(other, name))
            rotated[..., dst, :] = getattr(other, name)[..., src, :]
            getattr(self, name)[:, mask] = rotated
        pad = torch.empty_like(other.pad)
        pad[:, dst] = other.pad[:, src]
        self.pad[mask] = pad
        self.state[mask] = other.state


class HistoryTransformer(nn.Module):
    """Causal transformer over ``[user, h_1..h_n]`` with a sliding window of ``window`` exposures.

    Token of exposure j: item encoding + projection of its behaviour vector (7 zeros/ones) + watch feature.
    Position 0 is the user token, seen by every query with no distance penalty.
    """

    def __init__(self, dim: int, n_behaviours: int, window: int, layers: int = 2, heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.window, self.heads, self.n_layers = window, heads, layers
        self.resp = nn.Linear(n_behaviours + 1, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # ALiBi slopes: head h penalises distance with slope 2^-(h+1) (in units of one exposure).
        self.register_buffer("slopes", torch.tensor([2.0 ** -(h + 1) for h in range(heads)]), persistent=False)

    def attention_bias(self, qpos: Tensor, kpos: Tensor, key_pad: Tensor | None) -> Tensor:
        """(B or 1, heads, Lq, Lk) bias for queries at ``qpos`` (Lq,) and keys at ``kpos`` (Lk,);
        ``key_pad`` (B, Lk) True where a key is padding."""
        dist = (qpos[:, None] - kpos[None, :]).float()  # query - key
        is_user = (kpos == 0)[None, :]
        allowed = ((dist >= 0) & (dist < self.window)) | is_user  # itself, window-1 earlier tokens, the user
        bias = (-self.slopes[:, None, None] * dist.clamp(min=0)[None]).masked_fill(is_user[None], 0.0)
        bias = bias.masked_fill(~allowed[None], float("-inf"))[None]  # (1, heads, Lq, Lk)
        if key_pad is not None:
            bias = bias.masked_fill(key_pad[:, None, None, :], float("-inf"))
        return bias

    def tokens(self, items: Tensor, responses: Tensor) -> Tensor:
        """items (B, n, D) encodings, responses (B, n, n_behaviours + 1) -> (B, n, D) input tokens."""
        return items + self.resp(responses)

    def forward(self, user: Tensor, items: Tensor, responses: Tensor, pad: Tensor | None = None) -> Tensor:
        """user: (B, D); items: (B, n, D) item encodings; responses: (B, n, n_behaviours + 1);
        pad: (B, n) True for padding. Returns (B, 1 + n, D): output j is the state after exposures < j+1."""
        return self._run(user, items, responses, pad)[0]

    def last_state(self, user: Tensor, items: Tensor, responses: Tensor, pad: Tensor) -> Tensor:
        """The state after the whole history, (B, D): ``forward(...)[:, -1]``, or ``[:, 0]`` (the user token) where
        the history is empty (``pad[:, -1]``). Same inputs as :meth:`forward`. The top layer is computed only at
        those two positions: an agent's encoder needs no other output, and the top layer is most of its cost."""
        x = torch.cat([user[:, None], self.tokens(items, responses)], dim=1)
        pos = torch.arange(x.shape[1], device=x.device)
        key_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        if len(self.blocks) > 1:
            bias = self.attention_bias(pos, pos, key_pad)
            for blk in self.blocks[:-1]:
                x, _ = blk(x, bias)
        ends = pos[[0, -1]]
        out = self.norm(self.blocks[-1].at(x, self.attention_bias(ends, pos, key_pad), ends))  # (B, 2, D)
        return torch.where(pad[:, -1:], out[:, 0], out[:, 1])

    def _run(self, user, items, responses, pad) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        x = torch.cat([user[:, None], self.tokens(items, responses)], dim=1)
        pos = torch.arange(x.shape[1], device=x.device)
        key_pad = None if pad is None else torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        bias = self.attention_bias(pos, pos, key_pad)
        kvs = []
        for blk in self.blocks:
            x, kv = blk(x, bias)
            kvs.append(kv)
        return self.norm(x), kvs

    def init_cache(self, user: Tensor, items: Tensor, responses: Tensor, pad: Tensor) -> HistoryCache:
        """Encode a (left-padded) history once: (B, D), (B, n, D), (B, n, n_behaviours + 1), (B, n)."""
        out, kvs = self._run(user, items, responses, pad)
        W = self.window - 1
        b, n, _ = items.shape
        k = torch.stack([kv[0] for kv in kvs])  # (layers, B, heads, 1 + n, dh)
        v = torch.stack([kv[1] for kv in kvs])
        full_pad = torch.cat([pad.new_zeros(b, 1), pad], 1)
        if n < W:  # left-pad the slots after the user token
            z = k.new_zeros(*k.shape[:3], W - n, k.shape[-1])
            k = torch.cat([k[..., :1, :], z, k[..., 1:, :]], 3)
            v = torch.cat([v[..., :1, :], z, v[..., 1:, :]], 3)
            full_pad = torch.cat([full_pad[:, :1], pad.new_ones(b, W - n), pad], 1)
        keep = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(k.shape[3] - W, k.shape[3])])
        state = torch.where(pad[:, -1:], out[:, 0], out[:, -1])
        return HistoryCache(k[..., keep, :].contiguous(), v[..., keep, :].contiguous(), full_pad[:, keep].clone(), state)

    def extend(self, cache: HistoryCache, items: Tensor, responses: Tensor, all_states: bool = False) -> HistoryCache:
        """Append K < window exposures: items (B, K, D), responses (B, K, n_behaviours + 1). Updates ``cache``
        in place (and returns it); the new state equals a full re-encode with :meth:`forward`. With
        ``all_states`` the state after each of the K exposures is kept in ``cache.slate_states`` (B, K, D)."""
        x = self.tokens(items, responses)
        b, kk, _ = x.shape
        W = cache.width
        if kk > W:
            raise ValueError(f"cannot append {kk} exposures at once to a window of {W + 1}")
        # Positions (for ALiBi and the window): user 0, the cached exposures 1..W in age order, new W+1..W+K.
        kpos = torch.zeros(1 + W, dtype=torch.long)
        kpos[cache.ring_slots(0, W)] = torch.arange(1, W + 1)
        qpos = torch.arange(W + 1, W + 1 + kk)
        key_pad = torch.cat([cache.pad, cache.pad.new_zeros(b, kk)], 1)
        bias = self.attention_bias(qpos, torch.cat([kpos, qpos]), key_pad)
        news = []
        for layer, blk in enumerate(self.blocks):
            last = layer == len(self.blocks) - 1 and not all_states
            x, kv = blk(x, bias, (cache.k[layer], cache.v[layer]), last_only=last)
            news.append(kv)
        slots = cache.ring_slots(0, kk)  # the K oldest exposures leave the window
        for layer, (k_new, v_new) in enumerate(news):
            cache.k[layer, :, :, slots] = k_new
            cache.v[layer, :, :, slots] = v_new
        cache.pad[:, slots] = False
        cache.start = (cache.start + kk) % W
        out = self.norm(x)
        cache.state = out[:, -1]
        cache.slate_states = out if all_states else None
        return cache


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



class GroupedMLP(nn.Module):
    """G independent MLPs of the same shape, one per user group, evaluated in one batched pass.

    ``forward(x (B, in), group (B,) long) -> (B, out)``: row ``b`` goes through MLP number ``group[b]`` only.
    Every layer computes all G outputs with one einsum and keeps the row's own: G times the (tiny) FLOPs of one
    MLP but the op count of one, which is what costs on CPU. With G = 1 it is an ordinary MLP.
    """

    def __init__(self, sizes: list[int], groups: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.groups = groups
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / fan_in**0.5  # nn.Linear's default init, per group
            self.weights.append(nn.Parameter(torch.empty(groups, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(groups, fan_out).uniform_(-bound, bound)))
        self.act = act()

    def forward(self, x: Tensor, group: Tensor) -> Tensor:
        idx = group[:, None, None]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.einsum("bi,gio->bgo", x, w) + b  # (B, G, out)
            x = h.gather(1, idx.expand(-1, 1, h.shape[2])).squeeze(1)  # (B, out)
            if i < len(self.weights) - 1:
                x = self.act(x)
        return x
