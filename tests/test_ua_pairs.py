"""User–author pairs: the dynamic counts, ASA's successor (exact on a log), per-author aggregates, author item sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.data.ua_pairs import (
    UA_KINDS, asa_next, author_items, author_stats, exposure_labels, item_authors, pair_counts,
)
from retentionrl.errors import DataError


def _with_log(data, rows: list[tuple]) -> "object":
    """``data`` with a hand-made log: rows of (user, author, timestamp, click, long_view, like, follow)."""
    log = pd.DataFrame(rows, columns=["user_id", "author_id", "timestamp", "click", "long_view", "like", "follow"])
    for b in BEHAVIOURS:
        if b not in log:
            log[b] = 0
    log["item_id"], log["day"] = 0, 0
    return dataclasses.replace(data, log=log)


def test_pair_counts_and_asa_hand_values(sample):
    # user 0 sees author 7 at t=1 (click), t=5 (click + follow), author 8 at t=3; user 1 sees author 7 at t=2.
    # Rows out of time order within the log on purpose: counts follow the timestamps.
    data = _with_log(sample, [
        (0, 7, 5.0, 1, 1, 0, 1),
        (0, 7, 1.0, 1, 0, 1, 0),
        (0, 8, 3.0, 0, 0, 0, 0),
        (1, 7, 2.0, 0, 0, 0, 0),
        (0, 7, 9.0, 0, 0, 0, 0),
        (0, -1, 4.0, 1, 1, 1, 1),  # unknown author: no pair
    ])
    assert UA_KINDS == ("exposure", "click", "long_view", "like", "follow")
    counts = pair_counts(data)
    assert counts.tolist() == [
        [1, 1, 0, 1, 0],  # before t=5: the t=1 exposure (clicked, liked)
        [0, 0, 0, 0, 0],  # first of its pair
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],  # another user's pair with the same author
        [2, 2, 1, 1, 1],  # before t=9: t=1 and t=5
        [0, 0, 0, 0, 0],
    ]
    labels = exposure_labels(data)
    assert labels[0].tolist() == [1, 1, 1, 0, 1]
    # Eq. 4 per kind: + 1 where the kind's label is positive; the exposure count always grows.
    assert asa_next(counts[:1], labels[:1]).tolist() == [[2, 2, 1, 1, 1]]
    assert asa_next(np.array([[3, 1, 0, 0, 0]]), np.array([[1, 0, 0, 0, 0]])).tolist() == [[4, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="same shape"):
        asa_next(counts, labels[:2])


def test_asa_successor_is_the_pairs_true_next_state_on_the_real_log(kuairand_slice):
    """On a log, the pair's next interaction is its next exposure, and ASA's successor (Eq. 4) equals the counts
    recorded before it — for every one of the slice's exposures that has a next one of the same pair."""
    data = kuairand_slice
    log = data.log
    counts, labels = pair_counts(data), exposure_labels(data)
    known = log["author_id"].to_numpy() >= 0
    order = np.lexsort((log["timestamp"].to_numpy(), log["author_id"].to_numpy(), log["user_id"].to_numpy()))
    u, a = log["user_id"].to_numpy()[order], log["author_id"].to_numpy()[order]
    has_next = (u[:-1] == u[1:]) & (a[:-1] == a[1:]) & known[order][:-1]
    cur, nxt = order[:-1][has_next], order[1:][has_next]
    # Repeat pairs are sparse, as the paper says: 2,366 of the slice's 180,384 exposures have a next one.
    assert has_next.sum() > 1_000
    np.testing.assert_array_equal(asa_next(counts[cur], labels[cur]), counts[nxt])
    # and the counts are real: some pairs reach a follow, exposures are never fewer than clicks
    assert (counts[:, 4] > 0).any() and (counts[:, 0] >= counts[:, 1]).all()


def test_author_stats_and_item_sets(sample):
    authors = item_authors(sample)
    assert authors.shape == (sample.n_items,)
    first, second = np.unique(authors[authors >= 0])[:2]
    data = _with_log(sample, [(0, first, 1.0, 1, 1, 0, 0), (1, first, 2.0, 0, 0, 0, 1), (0, first, 3.0, 1, 0, 0, 0),
                              (2, second, 1.0, 0, 0, 0, 0)])
    stats = author_stats(data)
    k1, k2 = stats.code(np.array([first, second])) - 1
    assert stats.exposures[k1] == 3 and stats.rates[k1].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert stats.exposures[k2] == 1 and stats.rates[k2].tolist() == [0.0, 0.0, 0.0]
    assert stats.exposures.sum() == 4 and stats.code(np.array([-1, 10**12])).tolist() == [0, 0]
    day_one = dataclasses.replace(data, log=data.log.assign(day=[0, 1, 0, 0]))
    assert author_stats(day_one, days=np.array([0])).exposures[k1] == 2  # only the days asked for
    with pytest.raises(DataError, match="no catalogue item"):
        author_stats(_with_log(sample, [(0, 10**12, 1.0, 0, 0, 0, 0)]))

    ids, offsets, items = author_items(np.array([5, -1, 3, 5, 3, 9]))
    assert ids.tolist() == [3, 5, 9] and offsets.tolist() == [0, 2, 4, 5]
    assert [items[offsets[k]:offsets[k + 1]].tolist() for k in range(3)] == [[2, 4], [0, 3], [5]]


def test_a_log_without_author_ids_is_a_one_line_error_naming_the_dataset(sample):
    data = dataclasses.replace(sample, log=sample.log.drop(columns=["author_id"]))
    with pytest.raises(DataError, match=rf"^{sample.name}: the log has no author_id column: user-author pairs need it$"):
        pair_counts(data)
