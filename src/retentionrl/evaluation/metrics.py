"""Metric primitives used across the pipeline."""

from __future__ import annotations

import torch
from torch import Tensor

from retentionrl.utils.scores import roc_auc, total_variation

__all__ = ["RetentionMetrics", "roc_auc", "total_variation"]


class RetentionMetrics:
    """The metrics of design §4, accumulated over environment steps (vectorised over the batch).

    Session-level quantities count completed sessions; episode-level ones (new fans, UA pairs, total return
    gap) count completed user episodes. Definitions:

    * ``return_time`` — mean return day over session ends (lower is better);
    * ``retention`` — share of session ends followed by a next-day return;
    * ``<behaviour>_rate`` — per exposed item;
    * ``session_length`` — requests per session; ``watch_time`` — seconds per session;
    * ``diversity_session`` — distinct item tags per session; ``diversity_slate`` — distinct tags per slate;
    * ``diversity`` — RLIV-UA's column, which the paper does not define beyond "the variety of content types": the
      intra-list diversity of a slate with the 0/1 tag distance, i.e. the share of its K(K-1)/2 item pairs whose
      tags differ (0: one tag, 1: all different), averaged over slates (None for K = 1);
    * ``new_fans`` — follows per user episode; ``ua_count`` — distinct (user, author) pairs with a follow per
      user episode; ``total_return_gap`` — sum of return days per user episode.

    ``item_tag`` / ``item_author`` (N,) long, -1 where unknown; ``behaviours`` names the 7 response columns.
    """

    def __init__(self, n_rows: int, item_tag: Tensor, item_author: Tensor, behaviours: tuple[str, ...]) -> None:
        self.B, self.behaviours = n_rows, behaviours
        self.K = 0  # slate size, from the first step
        self.n_tags = int(item_tag.max()) + 2  # last column collects unknown tags (-1)
        self.item_tag = torch.where(item_tag >= 0, item_tag, torch.full_like(item_tag, self.n_tags - 1))
        self.item_author = item_author
        self._sess_tags = torch.zeros(n_rows, self.n_tags, dtype=torch.bool)
        self._sess_requests = torch.zeros(n_rows)
        self._sess_watch = torch.zeros(n_rows)
        self._ep_follows = torch.zeros(n_rows)
        self._ep_gap = torch.zeros(n_rows)
        self._ep_id = torch.arange(n_rows)  # a fresh id per user episode, for UA pairs
        self._next_ep = n_rows
        self._ua: set[tuple[int, int]] = set()
        self._ua_done = 0
        self.t = {k: 0.0 for k in ("exposures", "slates", "slate_tags", "sessions", "requests", "watch", "session_tags",
                                   "return_days", "next_day", "episodes", "follows", "gap", "slate_ild")}
        self.beh = torch.zeros(len(behaviours), dtype=torch.float64)

    def update(self, out) -> None:
        """Consume one :class:`~retentionrl.simulator.env.StepOutput`."""
        B, K = out.slate.shape
        self.K = K
        t = self.t
        t["exposures"] += B * K
        t["slates"] += B
        self.beh += out.responses.sum((0, 1)).double()
        tags = self.item_tag[out.slate]  # (B, K)
        srt = tags.sort(1).values
        t["slate_tags"] += float((1 + (srt[:, 1:] != srt[:, :-1]).sum(1)).sum())
        if K > 1:  # ILD: differing pairs i < j over K(K-1)/2 (the ordered count halves itself)
            t["slate_ild"] += float((tags[:, :, None] != tags[:, None, :]).sum((1, 2)).sum()) / (K * (K - 1))
        self._sess_tags.scatter_(1, tags, True)
        self._sess_requests += 1
        self._sess_watch += out.watch_time.sum(1)
        fol = out.responses[..., self.behaviours.index("follow")] if "follow" in self.behaviours else None
        if fol is not None and bool(fol.any()):
            self._ep_follows += fol.sum(1)
            rows, ks = torch.nonzero(fol, as_tuple=True)
            authors = self.item_author[out.slate[rows, ks]]
            for r, a in zip(rows.tolist(), authors.tolist()):  # follows are rare: a few per step at most
                if a >= 0:
                    self._ua.add((int(self._ep_id[r]), a))
        end = out.session_end
        if bool(end.any()):
            d = out.return_day[end].double()
            t["sessions"] += float(end.sum())
            t["requests"] += float(self._sess_requests[end].sum())
            t["watch"] += float(self._sess_watch[end].sum())
            t["session_tags"] += float(self._sess_tags[end][:, :-1].sum())  # unknown tags do not count
            t["return_days"] += float(d.sum())
            t["next_day"] += float((d == 1).sum())
            self._ep_gap[end] += out.return_day[end].float()
            self._sess_tags[end] = False
            self._sess_requests[end] = 0
            self._sess_watch[end] = 0
        ep = out.episode_end
        if bool(ep.any()):
            n = int(ep.sum())
            t["episodes"] += n
            t["follows"] += float(self._ep_follows[ep].sum())
            t["gap"] += float(self._ep_gap[ep].sum())
            done_ids = set(self._ep_id[ep].tolist())
            self._ua_done += sum(1 for (e, _) in self._ua if e in done_ids)
            self._ua = {p for p in self._ua if p[0] not in done_ids}
            self._ep_follows[ep] = 0
            self._ep_gap[ep] = 0
            self._ep_id[ep] = torch.arange(self._next_ep, self._next_ep + n)
            self._next_ep += n

    def result(self) -> dict[str, float | None]:
        t = self.t

        def ratio(a: str, b: str) -> float | None:
            return t[a] / t[b] if t[b] else None

        out: dict[str, float | None] = {
            "return_time": ratio("return_days", "sessions"),
            "retention": ratio("next_day", "sessions"),
            "session_length": ratio("requests", "sessions"),
            "watch_time": ratio("watch", "sessions"),
            "diversity_session": ratio("session_tags", "sessions"),
            "diversity_slate": ratio("slate_tags", "slates"),
            "diversity": ratio("slate_ild", "slates") if self.K > 1 else None,
            "new_fans": ratio("follows", "episodes"),
            "ua_count": self._ua_done / t["episodes"] if t["episodes"] else None,
            "total_return_gap": ratio("gap", "episodes"),
            "sessions": t["sessions"],
            "episodes": t["episodes"],
        }
        for j, b in enumerate(self.behaviours):
            out[f"{b}_rate"] = float(self.beh[j]) / t["exposures"] if t["exposures"] else None
        return out
