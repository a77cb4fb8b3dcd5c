"""Response model: the simulator's ground truth for what a user does with an item.

State ``s = Transformer([profile, last H exposures with their behaviours])`` (see
:class:`~retentionrl.nets.encoders.HistoryTransformer`); per item ``i`` and output ``o`` (the 7 behaviours and a
watch-time head) ``logit_o(s, i) = <q_o(s), v_i> + b_o(i) + c_o`` with ``q = MLP(s)`` and ``v_i`` the item's
encoding. Scoring every candidate is then one batched matmul ``(B, 8, D) @ (D, N)``.

Trained with plain (unweighted) BCE so that probabilities stay calibrated — the simulator samples
``y ~ Bernoulli(sigmoid(logit))`` — and MSE on ``log1p(watch seconds)``. The split is by time: the log's last
day is held out and per-behaviour AUC on it is compared with a popularity baseline (the item's training-day
rate of that behaviour, smoothed towards the global rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from retentionrl.data.schema import BEHAVIOURS, Interactions
from retentionrl.utils.scores import roc_auc
from retentionrl.nets.encoders import FeatureEncoder, FeatureTensors, HistoryCache, HistoryTransformer, mlp

N_OUT = len(BEHAVIOURS) + 1  # 7 behaviours + watch time
WATCH_SCALE = 5.0  # log1p(seconds) / WATCH_SCALE is the watch feature of a history token


@dataclass
class ResponseConfig:
    dim: int = 64
    window: int = 20  # H: exposures of history the state sees
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 128  # sequences per batch
    targets_per_sequence: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    watch_weight: float = 0.1
    min_positives_for_auc: int = 20


class ResponseModel(nn.Module):
    """Feature tables live in buffers so that a bundle holds everything the simulator needs."""

    def __init__(self, users: FeatureTensors, items: FeatureTensors, cfg: ResponseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        n_items = items.cat.shape[0]
        self.register_buffer("user_cat", users.cat)
        self.register_buffer("user_num", users.num)
        self.register_buffer("item_cat", items.cat)
        self.register_buffer("item_num", items.num)
        self.user_enc = FeatureEncoder(users.cardinalities, users.num.shape[1], d)
        self.item_enc = FeatureEncoder(items.cardinalities, items.num.shape[1], d)
        self.item_id = nn.Embedding(n_items, d)
        nn.init.normal_(self.item_id.weight, std=0.02)
        self.item_bias = nn.Embedding(n_items, N_OUT)
        nn.init.zeros_(self.item_bias.weight)
        self.out_bias = nn.Parameter(torch.zeros(N_OUT))
        self.history = HistoryTransformer(d, len(BEHAVIOURS), cfg.window, cfg.layers, cfg.heads, cfg.dropout)
        self.query = mlp([d, 2 * d, N_OUT * d], act=nn.GELU)
        self.item_norm = nn.LayerNorm(d)

    # --- encodings -------------------------------------------------------------------------------------
    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """(N, D) encodings of ``items`` (all items when None)."""
        if items is None:
            return self.item_norm(self.item_enc(self.item_cat, self.item_num) + self.item_id.weight)
        return self.item_norm(self.item_enc(self.item_cat[items], self.item_num[items]) + self.item_id(items))

    def user_vectors(self, users: Tensor) -> Tensor:
        return self.user_enc(self.user_cat[users], self.user_num[users])

    def states(self, users: Tensor, hist_items: Tensor, hist_resp: Tensor, pad: Tensor | None,
               item_vecs: Tensor | None = None) -> Tensor:
        """users (B,), hist_items (B, n), hist_resp (B, n, 8), pad (B, n) -> (B, 1 + n, D) states."""
        iv = item_vecs[hist_items] if item_vecs is not None else self.item_vectors(hist_items)
        return self.history(self.user_vectors(users), iv, hist_resp, pad)

    def init_cache(self, users: Tensor, hist_items: Tensor, hist_resp: Tensor, pad: Tensor,
                   item_vecs: Tensor | None = None) -> HistoryCache:
        """Encode a left-padded history (B, H) once; ``cache.state`` (B, D) is the user's state."""
        iv = item_vecs[hist_items] if item_vecs is not None else self.item_vectors(hist_items)
        return self.history.init_cache(self.user_vectors(users), iv, hist_resp, pad)

    def extend(self, cache: HistoryCache, items: Tensor, resp_tokens: Tensor, item_vecs: Tensor | None = None,
               all_states: bool = False) -> HistoryCache:
        """Append K exposures (B, K) with their (B, K, 8) response tokens; same states as a full re-encode
        (``all_states``: also the state after each of the K, in ``cache.slate_states`` (B, K, D))."""
        iv = item_vecs[items] if item_vecs is not None else self.item_vectors(items)
        return self.history.extend(cache, iv, resp_tokens, all_states)

    def queries(self, state: Tensor) -> Tensor:
        """(..., D) -> (..., 8, D)."""
        return self.query(state).unflatten(-1, (N_OUT, self.cfg.dim))

    def score(self, q: Tensor, items: Tensor, item_vecs: Tensor | None = None) -> Tensor:
        """q (..., 8, D), items (..., K) -> logits (..., K, 8) of the given items."""
        v = item_vecs[items] if item_vecs is not None else self.item_vectors(items)
        return torch.einsum("...od,...kd->...ko", q, v) + self.item_bias(items) + self.out_bias

    @staticmethod
    def token_features(responses: Tensor, watch_seconds: Tensor) -> Tensor:
        """(..., 7) behaviours and (...) watch seconds -> (..., 8) history-token response features."""
        return torch.cat([responses.float(), (torch.log1p(watch_seconds) / WATCH_SCALE)[..., None]], -1)


# --- training data ---------------------------------------------------------------------------------------
@dataclass
class _Windows:
    """Training windows over the (user, time)-sorted log: tokens ``log[a:b]``, loss on rows ``>= s``."""

    a: np.ndarray
    s: np.ndarray
    b: np.ndarray


def make_windows(user: np.ndarray, window: int, targets: int) -> _Windows:
    """Cut each user's rows into chunks of ``targets`` rows, each with up to ``window`` rows of context."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    a_list, s_list, b_list = [], [], []
    for st, en in zip(starts, ends):  # one entry per user: cheap, and only at build time
        s = np.arange(st, en, targets)
        a_list.append(np.maximum(st, s - window))
        s_list.append(s)
        b_list.append(np.minimum(en, s + targets))
    return _Windows(np.concatenate(a_list), np.concatenate(s_list), np.concatenate(b_list))


class LogTensors:
    """The columns of a sorted log the response model trains on, as tensors."""

    def __init__(self, data: Interactions) -> None:
        log = data.log
        self.user = torch.tensor(log["user_id"].to_numpy(np.int64))
        self.item = torch.tensor(log["item_id"].to_numpy(np.int64))
        self.resp = torch.tensor(log[list(BEHAVIOURS)].to_numpy(np.float32))
        self.watch = torch.tensor(log["watch_time"].to_numpy(np.float32))
        self.day = torch.tensor(log["day"].to_numpy(np.int64))
        self.tokens = ResponseModel.token_features(self.resp, self.watch)
        self.targets = torch.cat([self.resp, torch.log1p(self.watch)[:, None]], 1)

    def batch(self, w: _Windows, idx: np.ndarray) -> tuple[Tensor, ...]:
        """Padded batch: users (B,), items/tokens/targets (B, L[, 8]), rows (B, L) global row or -1,
        pad (B, L) and loss (B, L) masks."""
        a, s, b = w.a[idx], w.s[idx], w.b[idx]
        L = int((b - a).max())
        rows = a[:, None] + np.arange(L)[None]
        pad = rows >= b[:, None]
        rows_c = torch.as_tensor(np.where(pad, a[:, None], rows))
        newt = torch.as_tensor(~pad & (rows >= s[:, None]))
        return (self.user[torch.as_tensor(a)], self.item[rows_c], self.tokens[rows_c], self.targets[rows_c],
                rows_c, torch.as_tensor(pad), newt)


def popularity_scores(train_rows: Tensor, log: LogTensors, n_items: int, prior: float = 20.0) -> Tensor:
    """(N, 7) item training rate of each behaviour, shrunk towards the global rate with ``prior`` pseudo-views."""
    item = log.item[train_rows]
    resp = log.resp[train_rows]
    views = torch.bincount(item, minlength=n_items).float()[:, None]
    pos = torch.zeros(n_items, resp.shape[1]).index_add_(0, item, resp)
    glob = resp.mean(0, keepdim=True)
    return (pos + prior * glob) / (views + prior)


@dataclass
class ResponseFit:
    model: ResponseModel
    auc: dict[str, dict[str, float | int | None]]  # behaviour -> {model, popularity, positives}
    watch_rmse: float
    watch_sigma: float  # residual std of log1p(watch), for sampling watch time
    states_after: Tensor  # (n_rows, D): state after each log row (for leave / return models)
    history: list[dict[str, float]]


def train_response_model(data: Interactions, cfg: ResponseConfig, seed: int = 0, progress: bool = True,
                         user_counts: np.ndarray | None = None) -> ResponseFit:
    """Fit on all days but the last; report held-out-day AUC per behaviour (on every user's last day).

    ``user_counts`` (n_users,) ints: a bootstrap resample of users (an ensemble member) — each user's training
    windows are used that many times per epoch (0: not at all). None: every user once.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    log = LogTensors(data)
    last_day = int(log.day.max())
    train_mask = log.day < last_day
    windows = make_windows(log.user.numpy(), cfg.window, cfg.targets_per_sequence)
    pool = np.arange(len(windows.a))  # the training windows of one epoch
    if user_counts is not None:
        pool = np.repeat(pool, np.asarray(user_counts)[log.user.numpy()[windows.a]])
    model = ResponseModel(FeatureTensors.from_table(data.user_features), FeatureTensors.from_table(data.item_features), cfg)
    with torch.no_grad():  # start at the base rates: a calibrated model from step 0
        base = log.targets[train_mask].mean(0).clamp(1e-4, 1 - 1e-4)
        model.out_bias[: len(BEHAVIOURS)] = torch.log(base[:-1] / (1 - base[:-1]))
        model.out_bias[-1] = log.targets[train_mask, -1].mean()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = math.ceil(len(pool) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(1, cfg.epochs * n_batches), pct_start=0.1)
    history = []
    bar = tqdm(total=cfg.epochs * n_batches, desc="response model", disable=None if progress else True, leave=False)  # None: off when not a terminal
    for epoch in range(cfg.epochs):
        model.train()
        order = pool[rng.permutation(len(pool))]
        tot, cnt = 0.0, 0
        for k in range(n_batches):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            users, items, tokens, targets, rows, pad, newt = log.batch(windows, idx)
            mask = newt & train_mask[rows]
            if not mask.any():
                bar.update()
                continue
            loss = _loss(model, users, items, tokens, targets, pad, mask, cfg.watch_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * int(mask.sum())
            cnt += int(mask.sum())
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{tot / max(cnt, 1):.4f}")
        history.append({"epoch": epoch + 1, "train_loss": tot / max(cnt, 1)})
    bar.close()
    return _evaluate(model, data, log, windows, train_mask, cfg, history)


def _loss(model, users, items, tokens, targets, pad, mask, watch_weight) -> Tensor:
    states = model.states(users, items, tokens, pad)[:, :-1]  # output j predicts token j+1 = row a+j
    logits = model.score(model.queries(states), items[..., None]).squeeze(-2)  # (B, L, 8)
    m = mask
    bce = nn.functional.binary_cross_entropy_with_logits(logits[..., :-1][m], targets[..., :-1][m], reduction="none")
    mse = (logits[..., -1][m] - targets[..., -1][m]) ** 2
    return bce.sum(-1).mean() + watch_weight * mse.mean()


@torch.no_grad()
def _evaluate(model, data, log, windows, train_mask, cfg, history) -> ResponseFit:
    model.eval()
    n = len(log.item)
    logits_all = torch.zeros(n, N_OUT)
    states_after = torch.zeros(n, cfg.dim)
    item_vecs = model.item_vectors()
    for k in range(0, len(windows.a), 512):
        idx = np.arange(k, min(k + 512, len(windows.a)))
        users, items, tokens, _, rows, pad, newt = log.batch(windows, idx)
        st = model.states(users, items, tokens, pad, item_vecs)
        logits = model.score(model.queries(st[:, :-1]), items[..., None], item_vecs).squeeze(-2)
        logits_all[rows[newt]] = logits[newt]
        states_after[rows[newt]] = st[:, 1:][newt]  # output j+1 has seen row a+j
    test = ~train_mask
    pop = popularity_scores(torch.nonzero(train_mask).squeeze(1), log, data.n_items)
    auc: dict[str, dict] = {}
    for j, b in enumerate(BEHAVIOURS):
        if b not in data.behaviours:
            continue
        y = log.resp[test, j]
        npos = int(y.sum())
        enough = npos >= cfg.min_positives_for_auc and npos < len(y)
        auc[b] = {
            "positives": npos,
            "model": roc_auc(logits_all[test, j], y) if enough else None,
            "popularity": roc_auc(pop[log.item[test], j], y) if enough else None,
        }
    resid = logits_all[:, -1] - log.targets[:, -1]
    watch_rmse = float(resid[test].pow(2).mean().sqrt())
    watch_sigma = float(resid[train_mask].std())
    return ResponseFit(model, auc, watch_rmse, watch_sigma, states_after, history)
