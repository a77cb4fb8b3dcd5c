"""Command line: ``retentionrl <group> <command>``. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from retentionrl import __version__
from retentionrl.errors import RetentionRLError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from retentionrl.data import LOADERS

    p.add_argument("--dataset", default="kuairand-pure", help=f"one of: {', '.join(LOADERS)} (default: kuairand-pure)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the dataset's files (eventlog: the YAML column map). Default: the shipped KuaiRand sample",
    )
    p.add_argument("--session-rule", choices=("day", "gap"), default="day", help="user-day sessions or time-gap")
    p.add_argument("--gap-minutes", type=float, default=30.0, help="pause that ends a session with --session-rule gap")


def cmd_data_stats(args: argparse.Namespace) -> int:
    from retentionrl.data import load_dataset, sessionize
    from retentionrl.data.stats import dataset_stats, format_stats

    data = load_dataset(args.dataset, args.data_dir)
    sessions = sessionize(data, args.session_rule, args.gap_minutes)
    stats = dataset_stats(data, sessions, max_day=args.max_day)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _auc_table(meta: dict) -> str:
    rows = ["behaviour   positives   model AUC   popularity AUC"]
    for b, v in meta["auc"].items():
        m = "-" if v["model"] is None else f"{v['model']:.3f}"
        p = "-" if v["popularity"] is None else f"{v['popularity']:.3f}"
        rows.append(f"{b:<11} {v['positives']:>9}   {m:>9}   {p:>14}")
    return "\n".join(rows)


def cmd_simulator_build(args: argparse.Namespace) -> int:
    from retentionrl.config import from_dict, load_yaml, merge
    from retentionrl.simulator.build import BuildConfig, build_and_save

    base = load_yaml(args.config) if args.config else {}
    cli = {k: v for k, v in {"dataset": args.dataset, "data_dir": args.data_dir, "seed": args.seed,
                             "max_users": args.max_users}.items() if v is not None}
    if args.epochs is not None:
        cli["response"] = {"epochs": args.epochs}
    cfg = from_dict(BuildConfig, merge(base, cli), args.config or "build config")
    out = args.out or f"bundles/{cfg.dataset}" + ("" if cfg.data_dir else "-sample")
    path = build_and_save(cfg, out, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    print(f"bundle written to {path}")
    return 0


def cmd_simulator_info(args: argparse.Namespace) -> int:
    from retentionrl.simulator.bundle import Simulator

    sim = Simulator.load(args.bundle)
    m = sim.meta
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "real"}, indent=2))
        return 0
    print(f"{args.bundle}: {m['dataset']}, {m['n_users']:,} users, {m['n_items']:,} items, "
          f"built in {m['build_seconds']}s with retentionrl {m['retentionrl_version']}")
    print(_auc_table(m))
    lf, rf = m["leave_fit"], m["return_fit"]
    print(f"leave model   held-out NLL {lf['heldout_nll']:.4f}  (constant {lf['constant_nll']:.4f})")
    print(f"return model  held-out NLL {rf['heldout_nll']:.4f}  (best constant {rf['constant_nll']:.4f})")
    return 0


def cmd_simulator_report(args: argparse.Namespace) -> int:
    from retentionrl.simulator.bundle import Simulator
    from retentionrl.simulator.calibration import calibration_report

    sim = Simulator.load(args.bundle)
    out = args.out or str(Path(args.bundle) / "report")
    res = calibration_report(sim, out, preset=args.preset, n_users=args.users, seed=args.seed)
    print(f"calibration report written to {out}/calibration.md")
    print(f"return-day TV {res['tv_return_day']:.3f} (censoring-matched {res['tv_return_day_censored']:.3f}), "
          f"session-length TV {res['tv_session_length']:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The quickstart's default job, on the shipped sample: statistics, a simulator bundle (built once, then
    reused from bundles/), its AUC table and its calibration against the logs."""
    from retentionrl.simulator.build import BuildConfig, build_and_save
    from retentionrl.simulator.bundle import Simulator
    from retentionrl.simulator.calibration import calibration_report

    stats = argparse.Namespace(dataset="kuairand-pure", data_dir=None, session_rule="day", gap_minutes=30.0,
                               json=False, max_day=10)
    cmd_data_stats(stats)
    bundle = Path(args.bundle)
    if not (bundle / "weights.pt").is_file():
        print(f"\n[demo] building the simulator from the shipped sample into {bundle}")
        build_and_save(BuildConfig(), bundle)
    sim = Simulator.load(bundle)
    print(f"\n[demo] simulator {bundle}: response model on the held-out last day")
    print(_auc_table(sim.meta))
    res = calibration_report(sim, bundle / "report", preset="learned", n_users=500, seed=0)
    print(f"\n[demo] calibration (learned preset, logged-like policy): return-day TV "
          f"{res['tv_return_day_censored']:.3f} (censoring-matched), session-length TV {res['tv_session_length']:.3f}")
    print(f"[demo] report: {bundle / 'report' / 'calibration.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retentionrl",
        description="Optimize long-term user retention: data -> simulator -> agents -> evaluation -> report/serve.",
    )
    parser.add_argument("--version", action="version", version=f"retentionrl {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    demo = groups.add_parser("demo", help="the quickstart's default job on the shipped sample")
    demo.add_argument("--bundle", default="bundles/kuairand-pure-sample", help="where the sample's simulator lives")
    demo.set_defaults(func=cmd_demo)

    data = groups.add_parser("data", help="inspect datasets")
    data_cmds = data.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stats = data_cmds.add_parser("stats", help="users, items, behaviour rates, sessions, return days")
    _add_data_args(stats)
    stats.add_argument("--max-day", type=int, default=10, help="last bucket of the return-day histogram")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=cmd_data_stats)

    simp = groups.add_parser("simulator", help="build, inspect and calibrate simulator bundles")
    sim_cmds = simp.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = sim_cmds.add_parser("build", help="train response / leave / return models and write a bundle")
    build.add_argument("--dataset", default=None, help="dataset name (default: kuairand-pure)")
    build.add_argument("--data-dir", default=None, help="dataset folder (default: the shipped sample)")
    build.add_argument("--config", default=None, help="YAML build config (see configs/simulator/)")
    build.add_argument("--out", default=None, help="bundle directory (default: bundles/<dataset>)")
    build.add_argument("--epochs", type=int, default=None, help="response-model epochs")
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--max-users", type=int, default=None, help="build on a random subset of users")
    build.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    build.set_defaults(func=cmd_simulator_build)
    info = sim_cmds.add_parser("info", help="what a bundle holds: sizes, AUC table, fit scores")
    info.add_argument("bundle")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_simulator_info)
    report = sim_cmds.add_parser("report", help="calibration report: simulated vs real distributions")
    report.add_argument("bundle")
    report.add_argument("--out", default=None, help="report folder (default: BUNDLE/report)")
    report.add_argument("--preset", default="learned", help="simulator preset to drive (default: learned)")
    report.add_argument("--users", type=int, default=2000, help="simulated users")
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(func=cmd_simulator_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RetentionRLError as exc:
        print(f"retentionrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retentionrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
