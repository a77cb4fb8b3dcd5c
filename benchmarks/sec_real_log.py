"""SEC on the real log (the paper's online form, issue 12 path (b)): offline top-k cluster accuracy on the log's
last day, trained straight from the log (no simulated interaction).

    python benchmarks/sec_real_log.py --bundle bundles/kuairand-pure [--data-dir ../shared/data/kuairand-pure]
        [--clusters 32] [--source response] [--seed 0] [--expert-max-day 3] [--slate-size 6] [--out FILE.md]

Steps: k-means item clusters of the bundle's item vectors (the actions); one row per logged exposure
(:func:`~retentionrl.training.real_logs.real_log_rows`); train = days before the last day, test = the last day
(training labels censored at the cut); experts = users whose mean observed return day in the training days is
at most ``--expert-max-day``. Reported: top-k (1, 5, 10) accuracy of the exposed item's cluster on the experts'
last-day exposures (and on every user's, for context) for

* ``popularity`` — the clusters' share of all training rows (one ranking for everyone);
* ``expert popularity`` — the same over the experts' training rows only (cloning experts with no state);
* ``history frequency`` — the clusters of the state's H history items, ties and empty histories broken by
  popularity (how far "more of the same" goes);
* the hooks ``bc_all`` and ``sec`` in :data:`POLICIES` (BC on all users, SEC on the expert levels): each takes a
  :class:`Context` and returns (N_test, C) scores of the test rows, or None while it is not wired.

The bundle is only read for encodings (profiles, item ids, history window, item vectors); it must have been
built from the same log (checked).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from retentionrl.data import load_dataset
from retentionrl.simulator.bundle import Simulator
from retentionrl.training.real_logs import (
    ItemClusters, expert_users, item_clusters, last_day_split, popularity_probs, real_log_rows, select_rows,
    topk_cluster_accuracy, user_retention_from_rows,
)
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
KS = (1, 5, 10)


@dataclass
class Context:
    """What a policy hook gets. ``train``: every training row (all users; censored at the cut); ``test``: the
    rows it is scored on (N_test); ``retention``: per-user retention of the training rows
    (``user_retention_from_rows``); ``experts`` (U,) bool."""

    sim: Simulator
    clusters: ItemClusters
    train: dict[str, Tensor]
    test: dict[str, Tensor]
    retention: pd.DataFrame
    experts: Tensor
    expert_max_day: float
    seed: int


def popularity(ctx: Context) -> Tensor:
    return popularity_probs(ctx.train, ctx.clusters.n_clusters)


def expert_popularity(ctx: Context) -> Tensor:
    return popularity_probs(select_rows(ctx.train, ctx.experts[ctx.train["user"]]), ctx.clusters.n_clusters)


def history_frequency(ctx: Context) -> Tensor:
    """(N, C): number of the state's history items in each cluster, plus the popularity share (< 1) to break ties."""
    C = ctx.clusters.n_clusters
    lab = ctx.clusters.labels[ctx.test["hist_items"]]  # (N, H)
    valid = (~ctx.test["hist_pad"]).float()
    counts = torch.zeros(len(lab), C).scatter_add_(1, lab, valid)
    return counts + popularity(ctx)[None]


def bc_all(ctx: Context) -> Tensor | None:
    """Hook: behaviour cloning of the cluster action on all users' training rows (one head, no AER)."""
    return None  # wired by the main session (agents/sec.py with one level over all users)


def sec(ctx: Context) -> Tensor | None:
    """Hook: SEC — levels of experts by return day, shared encoder, one head per level, adaptive selection."""
    return None  # wired by the main session (agents/sec.py)


POLICIES: dict[str, Callable[[Context], Tensor | None]] = {
    "popularity": popularity, "expert popularity": expert_popularity, "history frequency": history_frequency,
    "bc_all": bc_all, "sec": sec,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--dataset", default="kuairand-pure")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "kuairand-pure"))
    ap.add_argument("--clusters", type=int, default=32)
    ap.add_argument("--source", default="response", choices=("response", "features"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expert-max-day", type=float, default=3.0)
    ap.add_argument("--slate-size", type=int, default=6, help="exposures per request for step_in_session")
    ap.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = ap.parse_args()

    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    sim = Simulator.load(args.bundle)
    data = load_dataset(args.dataset, args.data_dir)
    t0 = time.time()
    clusters = item_clusters(sim, args.clusters, seed=args.seed, source=args.source)
    t_clusters = time.time() - t0
    t0 = time.time()
    rows = real_log_rows(data, sim, clusters, slate_size=args.slate_size)
    t_rows = time.time() - t0
    train, test = last_day_split(rows)
    retention = user_retention_from_rows(train, sim.n_users)
    experts = expert_users(retention, args.expert_max_day)

    sizes = clusters.sizes().numpy()
    exp_share = np.bincount(rows["action"].numpy(), minlength=clusters.n_clusters) / len(rows["action"])
    n_rows = len(rows["user"])
    say(f"# SEC on the real log: {sim.meta['dataset']} ({Path(args.data_dir).name}), bundle {sim.short_fingerprint}")
    say()
    say(f"Command: `python benchmarks/sec_real_log.py --bundle {args.bundle} --clusters {args.clusters} "
        f"--source {args.source} --seed {args.seed} --expert-max-day {args.expert_max_day:g} "
        f"--slate-size {args.slate_size}` on {torch.get_num_threads()} CPU threads.")
    say()
    say(f"- rows: {n_rows:,} exposures of {int(rows['user'].unique().numel()):,} users in {t_rows:.1f} s "
        f"(history window H = {sim.response.cfg.window}); clusters: {t_clusters:.1f} s")
    say(f"- {clusters.n_clusters} clusters of {args.source} item vectors: items per cluster min {sizes.min()}, "
        f"median {int(np.median(sizes))}, max {sizes.max()}; exposure share per cluster min {exp_share.min():.3f}, "
        f"max {exp_share.max():.3f}")
    last_day = int(rows["day"].max())
    say(f"- split: train {len(train['user']):,} rows (days < {last_day}), test {len(test['user']):,} rows "
        f"(day {last_day}, {int(test['user'].unique().numel()):,} users)")
    mean = retention["mean_return_day"].to_numpy()
    lvl = np.ceil(mean[experts.numpy()]).astype(int)
    say(f"- experts (mean training return day <= {args.expert_max_day:g}): {int(experts.sum()):,} of "
        f"{int((retention['n_sessions'] > 0).sum()):,} users with training sessions; by ceil(mean day): "
        + ", ".join(f"{k}: {int((lvl == k).sum()):,}" for k in sorted(set(lvl.tolist()))))

    on_expert = experts[test["user"]]
    groups = {"expert users": select_rows(test, on_expert), "all users": test}
    say(f"- scored rows: experts' last-day exposures {int(on_expert.sum()):,}; all users' {len(test['user']):,}")
    say()
    say("Top-k accuracy of the exposed item's cluster (ties broken by cluster index):")
    say()
    say("| policy | " + " | ".join(f"{g} top-{k}" for g in groups for k in KS) + " |")
    say("|---|" + "---:|" * (len(groups) * len(KS)))
    for name, policy in POLICIES.items():
        cells = []
        for g, rows_g in groups.items():
            ctx = Context(sim, clusters, train, rows_g, retention, experts, args.expert_max_day, args.seed)
            scores = policy(ctx)
            if scores is None:
                cells += ["–"] * len(KS)
                continue
            acc = topk_cluster_accuracy(scores, rows_g["action"], KS)
            cells += [f"{acc[k]:.3f}" for k in KS]
        say(f"| {name} | " + " | ".join(cells) + " |")
    say()
    say("– : hook not wired yet (agents/sec.py).")
    if args.out:
        write_text_atomic(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
