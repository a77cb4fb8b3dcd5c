"""Command line: ``retentionrl <group> <command>``. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
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


def cmd_demo(args: argparse.Namespace) -> int:
    """The quickstart's default job: statistics of the shipped sample."""
    args.dataset, args.data_dir, args.session_rule, args.gap_minutes = "kuairand-pure", None, "day", 30.0
    args.json, args.max_day = False, 10
    return cmd_data_stats(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retentionrl",
        description="Optimize long-term user retention: data -> simulator -> agents -> evaluation -> report/serve.",
    )
    parser.add_argument("--version", action="version", version=f"retentionrl {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    demo = groups.add_parser("demo", help="the quickstart's default job on the shipped sample")
    demo.set_defaults(func=cmd_demo)

    data = groups.add_parser("data", help="inspect datasets")
    data_cmds = data.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stats = data_cmds.add_parser("stats", help="users, items, behaviour rates, sessions, return days")
    _add_data_args(stats)
    stats.add_argument("--max-day", type=int, default=10, help="last bucket of the return-day histogram")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=cmd_data_stats)
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
