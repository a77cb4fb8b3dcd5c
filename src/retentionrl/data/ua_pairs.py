"""User–author pairs of a log: RLIV-UA's state ``s_ua = {f_u, f_a, f_ua^t}`` and its Adjacent State Approximation.

* :func:`pair_counts` — ``f_ua^t`` for every exposure: how many exposures, clicks, long views, likes and follows
  of this author's items the user had *before* this exposure (``UA_KINDS``), from the log alone (vectorised
  group-wise cumulative sums, no per-pair loop).
* :func:`asa_next` — Eq. 4 of the paper, per kind: the next state of a pair is its counts + 1 for each kind whose
  label is positive at this interaction (the exposure count always grows: the interaction happened), unchanged
  otherwise. On a log the pair's next interaction is the next exposure of the same pair, and since
  ``f_ua`` counts only this pair's interactions, ASA's successor equals the true one exactly
  (``tests/test_ua_pairs.py`` checks it on the shared KuaiRand slice); what ASA approximates is the rest of the
  state (the user's other interactions in between), which ``s_ua`` leaves out by design.
* :func:`author_stats` — ``f_a``'s aggregates per author (exposures, click / long-view / follow rates) from a
  set of days (the training days, so that the held-out day does not leak into the features).
* :func:`author_items` — the item set ``I`` of each author (CSR: offsets and item ids), over which the target
  ``max_j Q'(s'_ua, I_j)`` of Eq. 2 / 7 runs: every catalogue item of the author (the item table's
  ``author_id``), not only the items the log exposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retentionrl.data.schema import UA_KINDS, Interactions
from retentionrl.errors import DataError



def exposure_labels(data: Interactions) -> np.ndarray:
    """(n_exposures, len(UA_KINDS)) the 0/1 labels ASA adds (exposure always 1), row order of the log."""
    log = data.log
    out = np.ones((len(log), len(UA_KINDS)), dtype=np.int64)
    for j, kind in enumerate(UA_KINDS[1:], start=1):
        out[:, j] = log[kind].to_numpy() > 0
    return out


def pair_counts(data: Interactions) -> np.ndarray:
    """(n_exposures, len(UA_KINDS)) int64: the pair's counts before each exposure of ``data.log`` (row order of
    the log). Exposures of unknown authors (``author_id == -1``) get zeros: they form no pair."""
    log = data.log
    if "author_id" not in log:
        raise DataError(f"{data.name}: the log has no author_id column: user-author pairs need it")
    order = np.lexsort((log["timestamp"].to_numpy(), log["author_id"].to_numpy(), log["user_id"].to_numpy()))
    lab = exposure_labels(data)[order]
    keys = pd.DataFrame({"u": log["user_id"].to_numpy()[order], "a": log["author_id"].to_numpy()[order]})
    inclusive = pd.DataFrame(lab).groupby([keys["u"], keys["a"]], sort=False).cumsum().to_numpy()
    before = inclusive - lab  # counts strictly before the row
    before[keys["a"].to_numpy() < 0] = 0
    out = np.empty_like(before)
    out[order] = before
    return out


def asa_next(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eq. 4 per kind: ``counts`` (n, len(UA_KINDS)) + 1 where the kind's label (n, len(UA_KINDS)) is positive
    (numpy arrays or torch tensors alike: the agent applies it to its batches)."""
    if counts.shape != labels.shape:
        raise ValueError(f"counts {counts.shape} and labels {labels.shape} must have the same shape")
    return counts + (labels > 0)


@dataclass
class AuthorStats:
    """Per-author aggregates ``f_a`` (indexed by dense author code, see :attr:`authors`)."""

    authors: np.ndarray  # (A,) raw author ids, sorted
    exposures: np.ndarray  # (A,) float
    rates: np.ndarray  # (A, 3) click, long-view and follow rate (0 for unexposed authors)

    def code(self, author_ids: np.ndarray) -> np.ndarray:
        """Dense codes 1..A of raw author ids (0 = unknown or not in the table)."""
        if not len(self.authors):
            return np.zeros(len(author_ids), dtype=np.int64)
        idx = np.minimum(np.searchsorted(self.authors, author_ids), len(self.authors) - 1)
        return np.where(self.authors[idx] == author_ids, idx + 1, 0)


def item_authors(data: Interactions) -> np.ndarray:
    """(n_items,) raw author id of every catalogue item, -1 where unknown: from the item table's ``author_id``
    column (codes and vocabulary), else from the log (then only logged items have one)."""
    table = data.item_features
    if "author_id" in table.frame:
        codes = table.frame["author_id"].to_numpy()
        vocab = np.asarray([-1, *table.vocab["author_id"]], dtype=np.int64)
        return vocab[codes]
    out = np.full(data.n_items, -1, dtype=np.int64)
    log = data.log[data.log["author_id"] >= 0]
    out[log["item_id"].to_numpy()] = log["author_id"].to_numpy()
    return out


def author_stats(data: Interactions, days: np.ndarray | None = None) -> AuthorStats:
    """Aggregates per author over the exposures of ``days`` (None: all), for every author of the catalogue."""
    authors = np.unique(item_authors(data))
    authors = authors[authors >= 0]
    log = data.log if days is None else data.log[data.log["day"].isin(days)]
    log = log[log["author_id"] >= 0]
    code = np.searchsorted(authors, log["author_id"].to_numpy())
    raw = log["author_id"].to_numpy()
    bad = np.flatnonzero(authors[np.minimum(code, len(authors) - 1)] != raw) if len(authors) else np.arange(len(raw))
    if len(bad):
        raise DataError(f"{data.name}: log row {log.index[bad[0]]}: author_id {raw[bad[0]]} is carried by no "
                        f"catalogue item ({len(bad)} such rows)")
    exposures = np.bincount(code, minlength=len(authors)).astype(np.float64)
    sums = np.stack([np.bincount(code, weights=log[c].to_numpy(np.float64), minlength=len(authors))
                     for c in ("click", "long_view", "follow")], 1)
    rates = np.divide(sums, exposures[:, None], out=np.zeros_like(sums), where=exposures[:, None] > 0)
    return AuthorStats(authors=authors, exposures=exposures, rates=rates)


def author_items(item_author: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item set of each author, CSR: ``(authors (A,), offsets (A + 1,), items (n,))`` with author ``k``'s
    items ``items[offsets[k]:offsets[k + 1]]``; ``item_author`` (N,) is each item's raw author id (-1: none)."""
    items = np.flatnonzero(item_author >= 0)
    order = items[np.argsort(item_author[items], kind="stable")]
    authors, counts = np.unique(item_author[order], return_counts=True)
    return authors, np.concatenate([[0], np.cumsum(counts)]), order
