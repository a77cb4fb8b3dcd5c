"""RLIV-UA's RankingModel, a DeepFM click model, fitted on the real log: its held-out-day click AUC beside the
simulator's response model's and the popularity baseline's (issue 14).

    python benchmarks/deepfm_auc.py [--bundle bundles/kuairand-pure] [--data-dir ../shared/data/kuairand-pure]
                                    [--epochs 4] [--batch-size 1024] [--seeds 0 1 2] [--out docs/results/deepfm_auc.md]

The split is the response model's (simulator/response.py:fit_response): train on every day but the log's last,
evaluate on the last day. DeepFM reads the same feature tables (the bundle's, in its dense id space:
``training.real_logs.bundle_view`` checks the log is the one the bundle was built from) but, unlike the response
model, not the user's history: the gap between the two AUCs is what the history adds. Prints the table and its
wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from retentionrl.agents.deepfm import DeepFM, DeepFMConfig
from retentionrl.data import load_dataset
from retentionrl.evaluation.stats import mean_ci
from retentionrl.simulator.bundle import Simulator
from retentionrl.training.real_logs import bundle_view
from retentionrl.utils.io import write_text_atomic
from retentionrl.utils.scores import roc_auc

REPO = Path(__file__).resolve().parents[1]


def fit_and_score(sim: Simulator, users: torch.Tensor, items: torch.Tensor, click: torch.Tensor, train: torch.Tensor,
                  epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """(held-out AUC, train seconds) of one DeepFM fitted on the ``train`` rows."""
    agent = DeepFM(sim, DeepFMConfig(), seed=seed)
    idx = torch.nonzero(train).squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=gen)]
        for k in range(0, len(order), batch_size):
            b = order[k : k + batch_size]
            agent.fit_pairs(users[b], items[b], click[b])
    secs = time.time() - t0
    test = ~train
    with torch.no_grad():
        logits = agent.net.eval()(*agent.net.profile(users[test]), items[test])
    return roc_auc(logits, click[test]), secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--dataset", default="kuairand-pure")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "kuairand-pure"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "deepfm_auc.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.time()
    sim = Simulator.load(args.bundle)
    data = bundle_view(load_dataset(args.dataset, args.data_dir), sim)
    log = data.log
    users = torch.tensor(log["user_id"].to_numpy(np.int64))
    items = torch.tensor(log["item_id"].to_numpy(np.int64))
    click = torch.tensor(log["click"].to_numpy(np.float32))
    day = log["day"].to_numpy()
    train = torch.as_tensor(day < day.max())
    aucs, secs = [], []
    for s in args.seeds:
        a, t = fit_and_score(sim, users, items, click, train, args.epochs, args.batch_size, s)
        aucs.append(a)
        secs.append(t)
        print(f"[deepfm] seed {s}: held-out-day click AUC {a:.4f} ({t:.0f} s)", flush=True)
    ci = mean_ci(aucs)
    m, half = ci["mean"], ci["half_width"] or 0.0
    ref = sim.meta.get("auc", {}).get("click", {})
    n_test = int((~train).sum())
    lines = [
        "# DeepFM (RLIV-UA's RankingModel) on the real log: held-out-day click AUC",
        "",
        f"Command: `python benchmarks/deepfm_auc.py --epochs {args.epochs} --batch-size {args.batch_size} --seeds "
        f"{' '.join(map(str, args.seeds))}` (bundle `{sim.short_fingerprint}`, {sim.meta.get('dataset')}; train = "
        f"every day but the last, {int(train.sum()):,} exposures; held out = the last day, {n_test:,} exposures, "
        f"{int(click[~train].sum()):,} clicks; one thread).",
        "",
        "| model | reads | held-out-day click AUC |",
        "|---|---|---|",
        f"| DeepFM ({len(args.seeds)} seeds, {args.epochs} epochs) | user and item fields | {m:.4f} ± {half:.4f} |",
        f"| response model (the simulator's) | fields + the user's history | {ref.get('model', float('nan')):.4f} |",
        f"| popularity (training-day click rate of the item) | item | {ref.get('popularity', float('nan')):.4f} |",
        "",
        f"DeepFM fit: {np.mean(secs):.0f} s per seed; wall time of the benchmark {time.time() - t_all:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
