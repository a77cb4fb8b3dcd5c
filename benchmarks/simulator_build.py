"""Build the simulator from a full dataset and measure it: build time, held-out AUC vs popularity, leave and
return models' held-out likelihood vs constants, and the calibration of both presets.

    python benchmarks/simulator_build.py [--dataset kuairand-pure] [--data-dir ../shared/data/kuairand-pure]
                                         [--out bundles/kuairand-pure] [--epochs 4]

Prints the numbers and writes them to docs/results/simulator_<dataset>.md (and the calibration reports to
<out>/report-<preset>-slate<K>/).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from retentionrl.config import from_dict, load_yaml, merge
from retentionrl.simulator.build import BuildConfig, build_simulator
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.calibration import calibration_report
from retentionrl.simulator.response import ResponseConfig
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="kuairand-pure")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "kuairand-pure"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--config", default=None, help="YAML build config (configs/simulator/*.yaml); flags override it")
    ap.add_argument("--epochs", type=int, default=ResponseConfig.epochs)
    ap.add_argument("--users", type=int, default=2000, help="simulated users in each calibration run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out or REPO / "bundles" / args.dataset)

    t0 = time.time()
    base = load_yaml(args.config) if args.config else {}
    cfg = from_dict(BuildConfig, merge(base, {"dataset": args.dataset, "data_dir": args.data_dir, "seed": args.seed,
                                              "response": {"epochs": args.epochs}}), args.config or "build config")
    sim = build_simulator(cfg, progress=False)
    sim.save(out)
    build_s = time.time() - t0
    sim = Simulator.load(out)
    m = sim.meta
    lines = [
        f"# Simulator on {m['dataset']} ({m['n_users']:,} users, {m['n_items']:,} items, {m['n_interactions']:,} exposures)",
        "",
        f"Command: `python benchmarks/simulator_build.py --dataset {args.dataset} --data-dir {Path(args.data_dir).name} "
        + (f"--config {args.config} " if args.config else "")
        + f"--epochs {args.epochs} --seed {args.seed}` on {torch.get_num_threads()} CPU threads; "
        f"return days 1..{cfg.max_return_day}.",
        "",
        f"**Build time** (load, sessionize, response model {args.epochs} epochs, leave, return, save): {build_s:.0f} s.",
        "",
        "## Response model: held-out last day, per-behaviour AUC",
        "",
        "| behaviour | positives | model AUC | popularity AUC | beats popularity |",
        "|---|---:|---:|---:|---|",
    ]
    for b, v in m["auc"].items():
        if v["model"] is None:
            lines.append(f"| {b} | {v['positives']} | – | – | not computed: fewer than 20 positives, or no negatives |")
        else:
            lines.append(f"| {b} | {v['positives']} | {v['model']:.4f} | {v['popularity']:.4f} | "
                         f"{'yes' if v['model'] > v['popularity'] else 'NO'} |")
    lf, rf = m["leave_fit"], m["return_fit"]
    lines += [
        "",
        f"Watch-time head: held-out RMSE of log1p(seconds) {m['watch_rmse']:.3f}.",
        "",
        "## Leave and return models (held-out)",
        "",
        "| model | held-out NLL | constant NLL | better than constant |",
        "|---|---:|---:|---|",
        f"| leave (last day) | {lf['heldout_nll']:.4f} | {lf['constant_nll']:.4f} (base rate) | {'yes' if lf['heldout_nll'] < lf['constant_nll'] else 'NO'} (AUC {lf['heldout_auc']:.3f}) |",
        f"| return ({rf['n_test']:,} sessions of held-out users) | {rf['heldout_nll']:.4f} | {rf['constant_nll']:.4f} (best constant distribution) | {'yes' if rf['heldout_nll'] < rf['constant_nll'] else 'NO'} |",
        "",
        "## Calibration (logged-like policy; slate 6 is what the benchmarks use, slate 1 = one exposure per request)",
        "",
        "| preset | slate | return-day TV (raw) | return-day TV (censoring-matched) | session-length TV (exposures; floor) | on the slate's grid | mean return day (gaps ≥ D as D): sim (censoring-matched) / real |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for preset, slate in (("learned", 6), ("learned", 1), ("kuaisim", 6)):
        t = time.time()
        res = calibration_report(sim, out / f"report-{preset}-slate{slate}", preset=preset, n_users=args.users,
                                 seed=args.seed, slate_size=slate)
        c = res["comparison"]
        mr = c["mean_return_day"]
        lines.append(
            f"| {preset} | {slate} | {res['tv_return_day']:.3f} | {res['tv_return_day_censored']:.3f} | "
            f"{res['tv_session_length']:.3f} ({c['real_share_shorter_than_slate']:.3f}) | {res['tv_session_requests']:.3f} | "
            f"{mr['sim']:.2f} ({mr['sim_censored']:.2f}) / {mr['real']:.2f} |"
        )
        print(f"[calibration] {preset} slate {slate}: {time.time() - t:.0f}s")
    text = "\n".join(lines) + "\n"
    write_text_atomic(REPO / "docs" / "results" / f"simulator_{m['dataset']}.md", text)
    print(text)


if __name__ == "__main__":
    main()
