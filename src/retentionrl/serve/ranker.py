"""Requests in, rankings out: raw request values -> the policy's observation -> one forward pass -> top k.

Cold start (documented in the README):

* a user feature value the training data never had, or one left out, is the missing code (categorical) or the
  column's median (numeric) — what the simulator's tables hold for a missing value;
* a history item the artifact does not know is left out of the history (the policy has no embedding for it);
* a candidate the artifact does not know: a fusion policy scores it like any other (it only weighs the given
  scores); an item-level policy cannot, so it is ranked after every known candidate, in the order the request
  lists them, with score null.

The observation is the one the simulator gives the same user: the profile codes and standardised numbers, the last
H history items (oldest first, left-padded) with their behaviour tokens, and the session context.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.nets.encoders import scale_numeric
from retentionrl.serve.artifact import Artifact
from retentionrl.serve.schema import RankedItem, RankRequest, RankResponse
from retentionrl.simulator.response import ResponseModel
from retentionrl.spaces import Obs

NB = len(BEHAVIOURS)


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite output (a policy fed an extreme but valid input) is null."""
    return x if math.isfinite(x) else None


def _key(value: Any) -> str:
    """A raw id or feature value as a lookup key: 3, 3.0 and "3" are the same value."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Ranker:
    """Ranks batches of :class:`RankRequest` with one artifact's policy (``rank``: one forward for the batch)."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        inputs = artifact.manifest["inputs"]
        self.H = int(inputs["window"])
        self.item_index = {_key(raw): i for i, raw in enumerate(inputs["item_ids"])}
        self.cat_columns = list(inputs["user_categorical"])
        self.cat_codes = [{_key(v): c + 1 for c, v in enumerate(vals)} for vals in inputs["user_categorical"].values()]
        self.num_scales = list(inputs["user_numeric"])
        self.num_columns = [s["name"] for s in self.num_scales]
        self.features = set(self.cat_columns) | set(self.num_columns)

    @property
    def version(self) -> str:
        return self.artifact.version

    def check(self, req: RankRequest) -> str | None:
        """What the schema cannot know: a user feature name the artifact does not have, or a non-number for a
        numeric feature. Returns the error (naming the field) or None."""
        for k, v in req.user.features.items():
            if k not in self.features:
                return f"user.features.{k}: unknown user feature (known: {', '.join(sorted(self.features))})"
            if k in self.num_columns and v is not None and (isinstance(v, str) or isinstance(v, bool)):
                return f"user.features.{k}: a number is expected, got {v!r}"
        return None

    # --- request -> observation ------------------------------------------------------------------------------
    def observe(self, reqs: list[RankRequest]) -> tuple[Obs, list[dict[str, Any]]]:
        """(Obs of batch B = len(reqs), per request what was cold): candidates are left empty (fusion policies do
        not read them; item-level ones get theirs per request in :meth:`rank`)."""
        B, H = len(reqs), self.H
        # numpy buffers filled element-wise (cheap), one torch conversion each (per-element torch writes are not)
        cat = np.zeros((B, len(self.cat_columns)), dtype=np.int64)
        num = np.zeros((B, len(self.num_scales)), dtype=np.float32)
        items = np.zeros((B, H), dtype=np.int64)
        beh = np.zeros((B, H, NB), dtype=np.float32)
        watch = np.zeros((B, H), dtype=np.float32)
        pad = np.ones((B, H), dtype=bool)
        ctx = np.array([[r.context.session_index, r.context.step_in_session, r.context.days_since_last]
                        for r in reqs], dtype=np.float64)
        colds = []
        for b, r in enumerate(reqs):
            f = r.user.features
            unseen = []
            for j, (col, codes) in enumerate(zip(self.cat_columns, self.cat_codes)):
                v = f.get(col)
                if v is not None:
                    cat[b, j] = codes.get(_key(v), 0)
                    if cat[b, j] == 0:
                        unseen.append(col)
            for j, sc in enumerate(self.num_scales):
                v = f.get(sc["name"])  # a number or None (checked by check())
                num[b, j] = scale_numeric(None if v is None else float(v), sc)
            known = [(self.item_index[k], h) for h in r.history if (k := _key(h.item_id)) in self.item_index]
            dropped = len(r.history) - len(known)
            known = known[-H:]
            n = len(known)
            if n:
                items[b, H - n:] = [i for i, _ in known]
                beh[b, H - n:] = [[h.behaviours.get(x, 0.0) for x in BEHAVIOURS] for _, h in known]
                watch[b, H - n:] = [h.watch_time for _, h in known]
                pad[b, H - n:] = False
            colds.append({"history_items_dropped": dropped, "unseen_user_values": unseen})
        resp = ResponseModel.token_features(torch.from_numpy(beh), torch.from_numpy(watch))
        ctx = torch.from_numpy(ctx)
        cat, num, items, pad = (torch.from_numpy(a) for a in (cat, num, items, pad))
        obs = Obs(user=torch.zeros(B, dtype=torch.long), profile_cat=cat, profile_num=num, hist_items=items,
                  hist_resp=resp, hist_pad=pad, session_index=ctx[:, 0].long(), step_in_session=ctx[:, 1].long(),
                  days_since_last=ctx[:, 2].float(), candidates=torch.empty(0, dtype=torch.long))
        return obs, colds

    # --- ranking ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rank(self, reqs: list[RankRequest]) -> list[RankResponse]:
        """One response per request. Fusion policies: one forward for the whole batch, (B, 7) weights, then each
        request's (C, 7) scores @ its weights; item-level policies: one forward per request over its candidates."""
        obs, colds = self.observe(reqs)
        agent = self.artifact.agent
        out = []
        if self.artifact.fusion:
            weights = agent.act(obs, explore=False).float()  # (B, 7)
            for b, r in enumerate(reqs):
                s = torch.from_numpy(r.score_matrix(BEHAVIOURS))  # (C, 7)
                score = s @ weights[b]  # (C,)
                top = torch.topk(score, r.k).indices.tolist()
                ids = r.item_ids()
                cold = sum(_key(i) not in self.item_index for i in ids)
                out.append(RankResponse(
                    items=[RankedItem(item_id=ids[i], score=_finite(float(score[i]))) for i in top],
                    fusion_weights={x: _finite(w) for x, w in zip(BEHAVIOURS, weights[b].tolist())},
                    artifact_version=self.version,
                    cold_start={**colds[b], "candidates_unknown": cold}))
            return out
        for b, r in enumerate(reqs):
            ids = r.item_ids()
            dense = [self.item_index.get(_key(i)) for i in ids]
            known = [i for i, d in enumerate(dense) if d is not None]
            ranked: list[RankedItem] = []
            if known:
                o = _row(obs, b)
                o.candidates = torch.tensor([dense[i] for i in known])
                score = agent.act(o, explore=False)[0].float()  # (C_known,)
                order = torch.topk(score, min(r.k, len(known))).indices.tolist()
                ranked = [RankedItem(item_id=ids[known[i]], score=_finite(float(score[i]))) for i in order]
            unknown = [i for i, d in enumerate(dense) if d is None]
            ranked += [RankedItem(item_id=ids[i], score=None) for i in unknown[: r.k - len(ranked)]]
            out.append(RankResponse(items=ranked, fusion_weights=None, artifact_version=self.version,
                                    cold_start={**colds[b], "candidates_unknown": len(unknown)}))
        return out


def _row(obs: Obs, b: int) -> Obs:
    """Row ``b`` of a batched observation as a batch of one."""
    return Obs(**{k: (v[b : b + 1] if isinstance(v, Tensor) and k != "candidates" else v)
                  for k, v in vars(obs).items()})


def request_of(features: dict[str, Any], history: list[dict[str, Any]], candidates: list[dict[str, Any]], k: int,
               context: dict[str, Any] | None = None) -> RankRequest:
    """A :class:`RankRequest` from plain values (callers in Python: the tests)."""
    return RankRequest.model_validate({"user": {"features": features}, "history": history, "candidates": candidates,
                                       "k": k, "context": context or {}})
