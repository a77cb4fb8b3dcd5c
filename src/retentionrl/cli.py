"""Command line: ``retentionrl <group> <command>``. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from retentionrl import __version__
from retentionrl.errors import RetentionRLError

DEFAULT_BUNDLE = "bundles/kuairand-pure-sample"


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
    if args.members is not None:
        cli["ensemble"] = {"members": args.members}
    cfg = from_dict(BuildConfig, merge(base, cli), args.config or "build config")
    out = args.out or f"bundles/{cfg.dataset}" + ("" if cfg.data_dir else "-sample")
    path = build_and_save(cfg, out, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    print(f"bundle written to {path}")
    return 0


def cmd_simulator_inputs(args: argparse.Namespace) -> int:
    from retentionrl.simulator.build import add_inputs

    print(f"written {add_inputs(args.bundle, args.data_dir)} (fingerprint unchanged)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from retentionrl.serve.artifact import export_run, load_artifact

    out = export_run(args.run_dir, args.out, args.simulator)
    art = load_artifact(out)
    print(f"artifact {art.version} ({art.algo}, {art.manifest['action_mode']}) written to {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from retentionrl.serve.app import ServiceConfig, serve

    cfg = ServiceConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_candidates=args.max_candidates,
                        max_history=args.max_history, allow_swap=not args.no_swap)
    if min(cfg.max_batch, cfg.max_candidates, cfg.max_history) < 1 or cfg.max_wait_ms < 0:
        raise RetentionRLError("serve: --max-batch, --max-candidates and --max-history must be >= 1, --max-wait-ms >= 0")
    serve(args.artifact_dir, args.host, args.port, cfg, log=lambda m: print(m, flush=True))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from retentionrl.serve.replay import ReplayConfig, replay, report_markdown

    cfg = ReplayConfig(dataset=args.dataset, data_dir=args.data_dir, days=args.days, history=args.history, k=args.k,
                       max_user_days=args.max_user_days, concurrency=args.concurrency, min_candidates=args.min_candidates)
    if min(cfg.days, cfg.history, cfg.k, cfg.concurrency) < 1:
        raise RetentionRLError("replay: --days, --history, --k and --concurrency must be >= 1")
    out = args.out or f"replay/{Path(args.artifact_dir).name}"
    report = replay(args.artifact_dir, cfg, out, url=args.url, simulator=args.simulator)
    print(report_markdown(report), end="")
    print(f"report written to {out}/report.md")
    return 0


def cmd_simulator_info(args: argparse.Namespace) -> int:
    from retentionrl.simulator.bundle import Simulator

    sim = Simulator.load(args.bundle)
    m = sim.meta
    if args.json:
        print(json.dumps({"fingerprint": sim.fingerprint, **{k: v for k, v in m.items() if k != "real"}}, indent=2))
        return 0
    built = (f", built in {m['build_seconds']}s with retentionrl {m.get('retentionrl_version', '?')}"
             if "build_seconds" in m else " (not built from a log: no fit scores)")
    print(f"{args.bundle}: {m['dataset']}, {m['n_users']:,} users, {m['n_items']:,} items{built}")
    print(f"fingerprint {sim.short_fingerprint} (what runs made on it record; --json for all 64 hex digits)")
    if "auc" in m:
        print(_auc_table(m))
    for name, key, const in (("leave model ", "leave_fit", "constant"), ("return model", "return_fit", "best constant")):
        if key in m:
            print(f"{name}  held-out NLL {m[key]['heldout_nll']:.4f}  ({const} {m[key]['constant_nll']:.4f})")
    return 0


def cmd_simulator_report(args: argparse.Namespace) -> int:
    from retentionrl.simulator.bundle import Simulator
    from retentionrl.simulator.calibration import calibration_report
    from retentionrl.simulator.env import PRESETS

    # Checked here, before the report folder is created (0 users would write a report of no sessions).
    if args.users < 1:
        raise RetentionRLError(f"--users must be at least 1, got {args.users}")
    if args.preset not in PRESETS:
        raise RetentionRLError(f"--preset: unknown simulator preset '{args.preset}' (known: {', '.join(PRESETS)})")
    sim = Simulator.load(args.bundle)
    out = args.out or str(Path(args.bundle) / "report")
    res = calibration_report(sim, out, preset=args.preset, n_users=args.users, seed=args.seed, slate_size=args.slate_size)
    print(f"calibration report written to {out}/calibration.md (preset {args.preset}, slate size {res['slate_size']})")
    print(f"return-day TV {res['tv_return_day']:.3f} (censoring-matched {res['tv_return_day_censored']:.3f}), "
          f"session-length TV {res['tv_session_length']:.3f} (on the slate's grid {res['tv_session_requests']:.3f})")
    return 0


def _load_or_build_sample_bundle(path: str | Path):
    from retentionrl.simulator.build import BuildConfig, build_and_save
    from retentionrl.simulator.bundle import Simulator

    path = Path(path)
    if not (path / "weights.pt").is_file():
        print(f"[simulator] building the simulator from the shipped sample into {path}")
        build_and_save(BuildConfig(), path)
    return Simulator.load(path)


def cmd_train(args: argparse.Namespace) -> int:
    import shlex

    from retentionrl.config import from_dict, load_config, merge
    from retentionrl.simulator.bundle import Simulator
    from retentionrl.training import trainer_for
    from retentionrl.training.run import RunDir, check_stop_after, load_recorded, pop_record

    check_stop_after(args.stop_after, "--stop-after")  # before anything is read, built or written
    over = {k: v for k, v in {"algo": args.algo, "seed": args.seed}.items() if v is not None}
    # A run's config.yaml may be given as --config: its `bundle` section is provenance, not a setting.
    record = None
    if args.resume:
        # The run's own config and bundle unless given; a different config or simulator is refused by train().
        run = RunDir(args.resume)
        saved, _ = run.read_config()
        run.resumable_record()  # before loading any bundle
        raw = merge(load_config(args.config) if args.config else saved, over)
        where = args.config or str(run.config)
        pop_record(raw, where)  # the run's own record is what counts
        sim = Simulator.load(args.simulator) if args.simulator else Simulator.load(run.simulator_path())
    else:
        raw = merge(load_config(args.config) if args.config else {}, over)
        where = args.config or "train config"
        record = pop_record(raw, where)
        sim = None
    config_cls, train = trainer_for(raw.get("algo", "td3"), raw.get("loop"), where)
    cfg = from_dict(config_cls, raw, where)
    cfg.validate(where)  # before a bundle is loaded or built, naming the config file
    if sim is None and record is not None and not args.simulator:
        # A copied run config starts on the bundle it records (checked by fingerprint), not on the default one.
        sim = load_recorded(record, Path(args.config).parent, args.config)
    if sim is None:
        sim = Simulator.load(args.simulator) if args.simulator else _load_or_build_sample_bundle(DEFAULT_BUNDLE)
    run_dir = args.resume or args.out or f"runs/{cfg.algo}-seed{cfg.seed}"
    summary = train(cfg, sim, run_dir, resume=bool(args.resume), stop_after=args.stop_after, where=where,
                    tensorboard=args.tensorboard)
    if summary is None:
        print(f"stopped at step {args.stop_after}; continue with: retentionrl train --resume {shlex.quote(str(run_dir))}")
        return 0
    ev = summary["eval"]
    print(f"{run_dir}: return time {ev['return_time']:.3f}, retention {ev['retention']:.3f}, "
          f"click {ev['click_rate']:.3f} ({summary['train_seconds']:.0f}s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from retentionrl.evaluation.protocol import evaluate_policy
    from retentionrl.training import load_trained
    from retentionrl.training.run import RunDir

    # The run's own bundle unless --simulator names one; either way its fingerprint must be the run's.
    sim = RunDir(args.run_dir).load_simulator(args.simulator)
    cfg, agent = load_trained(args.run_dir, sim)
    res = evaluate_policy(agent, sim, cfg.eval_config())
    print(json.dumps(res["mean"], indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from retentionrl.bench.report import write_comparison

    md, ref = write_comparison(args.run_dirs, args.out, args.reference, columns=args.columns)
    print(md)
    print(f"written: {args.out}/comparison.md, comparison.csv, training_curves.png")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from retentionrl.bench.engines import run_grid
    from retentionrl.bench.gridfile import load_grid, plan, select, write_table

    if args.workers < 1 or args.retries < 0:
        raise RetentionRLError("--workers must be >= 1 and --retries >= 0")
    tables = select(load_grid(args.grid), args.tables)
    every, chosen = plan(tables, args.only)  # plans every cell (bundles loaded, configs resolved) before any runs
    if not args.no_run:
        run_grid(chosen, workers=args.workers, engine=args.engine, address=args.address, retries=args.retries,
                 tensorboard=args.tensorboard)
    finished = {c.run_dir for c in every if (Path(c.run_dir) / "summary.json").is_file()}
    for table in tables:
        done = [c.run_dir for c in table.cells() if c.run_dir in finished]
        print(f"## {table.name} ({len(done)}/{table.n_cells} cells) -> {table.out}")
        print(write_table(table, done, args.overwrite_partial))
    missing = [c for c in chosen if c.run_dir not in finished]
    if missing and not args.no_run:
        print(f"retentionrl: {len(missing)} cell(s) did not finish (see the [grid] lines above); rerun to retry them",
              file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The quickstart's default job, on the shipped sample: statistics, a simulator bundle (built once, then
    reused from bundles/), its AUC table, its calibration against the logs, and a comparison of short runs
    (:func:`demo_runs`, reused while the bundle and the demo's config are unchanged)."""
    from retentionrl.simulator.calibration import calibration_report

    stats = argparse.Namespace(dataset="kuairand-pure", data_dir=None, session_rule="day", gap_minutes=30.0,
                               json=False, max_day=10)
    cmd_data_stats(stats)
    bundle = Path(args.bundle)
    sim = _load_or_build_sample_bundle(bundle)
    print(f"\n[demo] simulator {bundle}: response model on the held-out last day")
    print(_auc_table(sim.meta))
    res = calibration_report(sim, bundle / "report", preset="learned", n_users=64 if args.quick else 500, seed=0)
    print(f"\n[demo] calibration (learned preset, logged-like policy): return-day TV "
          f"{res['tv_return_day_censored']:.3f} (censoring-matched), session-length TV {res['tv_session_length']:.3f}")
    print(f"[demo] report: {bundle / 'report' / 'calibration.md'}")

    # A short TD3 against the two fixed baselines, each frozen and evaluated on held-out simulated users.
    from retentionrl.bench.report import write_comparison

    runs = Path(args.runs)
    dirs = demo_runs(sim, runs, args.td3_steps, args.quick)
    md, _ = write_comparison(dirs, runs / "compare")
    print("\n[demo] frozen policies on held-out simulated users (KuaiSim preset):\n")
    print(md)
    print(leverage_line(sim, DEMO_TRAIN["preset"]))
    print(f"[demo] table, CSV and curves: {runs / 'compare'}")
    return 0


def leverage_line(sim, preset: str) -> str:
    """How far any policy can move return time on ``sim`` (held-out users), so that a reader of a table where
    TD3, ranking and random tie knows whether a tie is all the simulator allows."""
    floor, ceiling = sim.return_time_range(preset)
    return (f"[demo] leverage: in the {preset} preset no policy can reach a mean return time below {floor:.3f} or above "
            f"{ceiling:.3f} days on these users (the return law moves only with the session's mean reward); methods "
            f"within a few hundredths of each other are within what this simulator lets a policy change.")


DEMO_TRAIN = {"preset": "kuaisim", "n_users": 32, "log_every": 100, "eval_every": 300, "checkpoint_every": 300,
              "eval": {"n_users": 128, "n_episodes": 256, "seeds": [10000, 10001]}}
DEMO_QUICK = {"n_users": 8, "eval": {"n_users": 16, "n_episodes": 16, "seeds": [10000, 10001]}}


def demo_runs(sim, runs: Path, td3_steps: int, quick: bool, log: Callable[[str], None] = print) -> list[Path]:
    """The demo's runs (TD3 seeds 0 and 1, ranking, random), trained on ``sim`` unless already there. Each is keyed
    like a grid cell, ``runs/<algo>/seed<k>-<key>`` with ``key`` hashing its full config (defaults included) and
    ``sim``'s fingerprint: a finished run is reused only for the same config on the same simulator, so a rebuilt
    bundle or an edited demo config retrains in new directories instead of mixing simulators in one table."""
    from retentionrl.bench.grid import cell_dir
    from retentionrl.config import from_dict, to_dict
    from retentionrl.training.online import TrainConfig, train

    dirs = []
    for algo, steps, seeds in (("td3", td3_steps, (0, 1)), ("ranking", 1, (0,)), ("random", 1, (0,))):
        for seed in seeds:
            cfg = from_dict(TrainConfig, {**DEMO_TRAIN, **(DEMO_QUICK if quick else {}), "algo": algo, "seed": seed,
                                          "total_steps": steps, "warmup_steps": min(100, steps - 1)}, "demo")
            run, _ = cell_dir(runs, algo, seed, to_dict(cfg), sim.fingerprint)
            if (run / "summary.json").is_file():
                log(f"[demo] reusing {run} (same config and simulator)")
            else:
                log(f"[demo] training {algo} (seed {seed}, {steps} steps of {cfg.n_users} users) in {run}")
                train(cfg, sim, run, resume=(run / "config.yaml").is_file())
            dirs.append(run)
    return dirs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retentionrl",
        description="Optimize long-term user retention: data -> simulator -> agents -> evaluation -> report/serve.",
    )
    parser.add_argument("--version", action="version", version=f"retentionrl {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    demo = groups.add_parser("demo", help="the quickstart's default job on the shipped sample")
    demo.add_argument("--bundle", default=DEFAULT_BUNDLE, help="where the sample's simulator lives")
    demo.add_argument("--runs", default="runs/demo", help="where the demo's training runs go")
    demo.add_argument("--td3-steps", type=int, default=600, help="TD3 training steps (of 32 users each)")
    demo.add_argument("--quick", action="store_true", help="tiny simulations everywhere (a smoke test)")
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
    build.add_argument("--members", type=int, default=None,
                       help="bootstrap ensemble members that measure extrapolation (default 5; 0: none)")
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
    report.add_argument("--slate-size", type=int, default=None,
                        help="items per request (default: the preset's, 6, as the benchmarks use)")
    report.set_defaults(func=cmd_simulator_report)
    inputs = sim_cmds.add_parser("inputs", help="add inputs.json (raw ids, feature scales) to a bundle built before it existed")
    inputs.add_argument("bundle")
    inputs.add_argument("--data-dir", default=None, help="the data it was built from (default: its build config's)")
    inputs.set_defaults(func=cmd_simulator_inputs)
    from retentionrl.agents import AGENTS

    tr = groups.add_parser("train", help="train a policy in a simulator bundle")
    tr.add_argument("--algo", default=None, help=f"one of: {', '.join(AGENTS)}")
    tr.add_argument("--config", default=None, help="YAML train config (configs/train/*.yaml)")
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--simulator", default=None, help=f"bundle directory (default: {DEFAULT_BUNDLE}, built if missing; "
                    "with --resume: the run's own bundle)")
    tr.add_argument("--out", default=None, help="run directory (default: runs/<algo>-seed<seed>)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue a run from its last checkpoint (with its own config unless --config is given)")
    tr.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    tr.add_argument("--tensorboard", action="store_true",
                    help="also write the run's scalars as TensorBoard event files in RUN/tensorboard")
    tr.set_defaults(func=cmd_train)
    gr = groups.add_parser("grid", help="run a grid file's cells (resumable, local or Ray) and write its tables")
    gr.add_argument("grid", help="grid file (grids/*.yaml)")
    gr.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: a process pool on this machine (default); ray: a Ray cluster")
    gr.add_argument("--address", default=None, help="an existing Ray cluster (e.g. auto, ray://head:10001); default: "
                    "a local one with --workers CPUs, started for the run")
    gr.add_argument("--workers", type=int, default=1, help="cells at once (one thread each when > 1)")
    gr.add_argument("--tables", nargs="+", default=None, metavar="GLOB", help="only these tables (names or globs)")
    gr.add_argument("--only", nargs="+", default=None, metavar="GLOB",
                    help="run only cells whose label matches (tables still read every finished cell)")
    gr.add_argument("--retries", type=int, default=1, help="tries again a failed cell this many times (default 1)")
    gr.add_argument("--no-run", action="store_true", help="only write the tables from the finished cells")
    gr.add_argument("--overwrite-partial", action="store_true",
                    help="let a table with unfinished cells replace one on disk made from more cells")
    gr.add_argument("--tensorboard", action="store_true", help="runs also write TensorBoard event files")
    gr.set_defaults(func=cmd_grid)
    ev = groups.add_parser("evaluate", help="evaluate a run's frozen policy with its evaluation protocol")
    ev.add_argument("run_dir")
    ev.add_argument("--simulator", default=None, help="bundle directory (default: the run's own bundle)")
    ev.set_defaults(func=cmd_evaluate)
    cmp = groups.add_parser("compare", help="table with CIs and t-tests, CSV and training curves from run dirs")
    cmp.add_argument("run_dirs", nargs="+")
    cmp.add_argument("--out", default="reports/compare")
    cmp.add_argument("--reference", default=None, help="method to test against (default: the best by the first column)")
    cmp.add_argument("--columns", default="retention", choices=["retention", "author"],
                     help="retention: return time first (default); author: session length, watch time, CTR, "
                          "diversity, new fans, UA pairs (RLIV-UA's tables)")
    cmp.set_defaults(func=cmd_compare)
    exp = groups.add_parser("export", help="a finished run's policy as a self-contained, versioned serving artifact")
    exp.add_argument("run_dir")
    exp.add_argument("--out", required=True, metavar="ARTIFACT_DIR")
    exp.add_argument("--simulator", default=None, help="bundle directory (default: the run's own bundle)")
    exp.set_defaults(func=cmd_export)
    srv = groups.add_parser("serve", help="serve an artifact over HTTP (FastAPI + uvicorn)")
    srv.add_argument("artifact_dir")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-batch", type=int, default=64, help="requests per forward pass (micro-batching)")
    srv.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    srv.add_argument("--max-candidates", type=int, default=1000, help="candidates per request (413 above)")
    srv.add_argument("--max-history", type=int, default=1000, help="history items per request (413 above)")
    srv.add_argument("--no-swap", action="store_true", help="disable POST /v1/admin/swap")
    srv.set_defaults(func=cmd_serve)
    rep = groups.add_parser("replay", help="shadow-replay a real log against the service; NDCG / recall report")
    rep.add_argument("artifact_dir")
    rep.add_argument("--dataset", default="kuairand-pure")
    rep.add_argument("--data-dir", default=None, help="the log's folder (default: the shipped sample)")
    rep.add_argument("--url", default=None, help="a running service (default: start one for ARTIFACT_DIR on 127.0.0.1)")
    rep.add_argument("--simulator", default=None, help="the ranking stage's bundle (default: the artifact's)")
    rep.add_argument("--days", type=int, default=1, help="replay the log's last N days (default 1)")
    rep.add_argument("--history", type=int, default=50, help="history items per request")
    rep.add_argument("--k", type=int, default=10, help="NDCG@k and recall@k")
    rep.add_argument("--max-user-days", type=int, default=None, help="only the first N user-days")
    rep.add_argument("--concurrency", type=int, default=8)
    rep.add_argument("--min-candidates", type=int, default=2, help="score user-days with at least this many candidates")
    rep.add_argument("--out", default=None, help="report folder (default: replay/<artifact name>)")
    rep.set_defaults(func=cmd_replay)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _outside_error(exc: BaseException) -> str | None:
    """The one-line message for an error that the user's input or machine causes outside our own checks (a
    file that cannot be read or written, a full disk, text that does not decode), or None for anything else."""
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(files)}: {what}" if files else what
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot decode text as {exc.encoding} (byte {exc.start}: {exc.reason})"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        detail = str(exc).split("DefaultCPUAllocator: ")[-1]  # torch's text after its C++ location
        return f"out of memory ({detail or 'MemoryError'}); fewer parallel users or a smaller batch or model needs less"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    # Only check the types of modules already imported: importing pandas here would slow every command.
    yaml, pd = sys.modules.get("yaml"), sys.modules.get("pandas")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {exc}"
    if pd is not None and isinstance(exc, (pd.errors.ParserError, pd.errors.EmptyDataError)):
        return f"cannot parse a table: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; any error is one line on stderr and exit status 2 (130 when interrupted, 141 quietly when
    the output pipe is closed). Errors that are not the user's (a bug) say "internal error"; RETENTIONRL_DEBUG=1
    re-raises them with the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RetentionRLError as exc:
        print(f"retentionrl: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retentionrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): not an error, and nothing left to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit's flush
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the signal
    except Exception as exc:
        if os.environ.get("RETENTIONRL_DEBUG", "") not in ("", "0"):
            raise
        msg = _outside_error(exc)
        if msg is None:
            msg = (f"internal error: {type(exc).__name__}: {str(exc)} "
                   "(run with RETENTIONRL_DEBUG=1 for the traceback, and please report it)")
        print(f"retentionrl: error: {_one_line(msg)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
