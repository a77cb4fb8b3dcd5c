"""RLUR and GFN4Retention against the baselines the papers compare with, their ablations and the lambda sweep.

    python benchmarks/retention_methods.py [--parts kuairand movielens ablations sweep] [--workers 2]
                                           [--seeds 0 1 2 3 4] [--ablation-seeds 0 1 2]

Parts (each a resumable grid; finished runs are kept and skipped, so the tables can be filled over several
sittings — rerun the same command; a cell whose config or bundle changed is rerun, in its own
``<label>/seed<k>-<key>`` directory, see ``retentionrl.bench.grid``):

* ``kuairand``: TD3, SAC, DIN, CEM, RLUR, GFN4Retention x 5 seeds on ``bundles/kuairand-pure`` (KuaiSim
  preset). Runs live in ``runs/baselines-kuairand`` (shared with ``baselines_kuairand.py``).
* ``movielens``: the same six on ``bundles/ml-100k`` -> ``runs/movielens-100k``, with the ranking model and the
  random policy as reference rows (not candidates for the t-tests' reference).
* ``ablations``: RLUR w/o RND / normalisation / groups / soft regularisation; GFN4Retention NCD / NIF / SIF and
  the old terminal form (``terminal_step: state``).
* ``sweep``: GFN4Retention's balance lambda in {0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.5}.
* ``terminal-step``: GFN4Retention, its NCD / NIF / SIF ablations and the lambda sweep, each with the session
  end as a detailed-balance step into the terminal state (``terminal_step: transition``, the default) and with
  the earlier anchor on the state before the last request (``state``), side by side -> ``runs/gfn-terminal-step``
  (labels ``<config>-transition`` / ``<config>-state``; t-tests against the old form of the full model).
* ``learned``: TD3, SAC, CEM, RLUR, GFN4Retention, ranking and random x 5 seeds on the *learned* preset (leave
  and return models fitted to the logs, in exposure units), with the ensemble-disagreement columns and the
  measured leverage (every one-behaviour fusion policy, frozen) -> ``runs/learned-kuairand``.
* ``random-state``: TD3, GFN4Retention (and its NIF ablation), ranking and random with KuaiSim's kind of return
  model — the personal term an untrained random linear map of the end-of-session state (``personal:
  random_state``) — to measure how much a policy can move return time when the return law depends on the state
  it shapes. t-tests against random.

Writes ``docs/results/retention_<part>/`` (comparison.md / .csv, training curves, sweep plot). t-tests are
against the best *baseline* (by return time), as in the papers. Build the bundles first with
``benchmarks/simulator_build.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retentionrl.bench.grid import cells, grid_arguments, run_selected
from retentionrl.config import merge
from retentionrl.bench.report import (
    load_runs,
    sweep_plot,
    write_comparison,
)
from retentionrl.bench.leverage import bounds_markdown, measured_bounds
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.simulator.bundle import Simulator
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "configs" / "train"
BASELINES = ["td3", "sac", "din", "cem"]
METHODS = [*BASELINES, "rlur", "gfn4retention"]
LAMBDAS = [0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.5]
# The learned-preset table (issue 11, point 7): the methods and the two fixed policies, configs under configs/train.
LEARNED = ["td3-kuaisim", "sac-kuaisim", "cem-kuaisim", "rlur-kuaisim", "gfn4retention-kuaisim", "ranking-kuaisim",
           "random-kuaisim"]
LEARNED_BASELINES = ["td3-kuaisim-learned", "sac-kuaisim-learned", "cem-kuaisim-learned"]
RANDOM_STATE = ["td3-kuaisim", "gfn4retention-kuaisim", "ablations/gfn4retention-kuaisim-nif", "ranking-kuaisim",
                "random-kuaisim"]  # configs under configs/train
# GFN4Retention, Table 2 (last-1000-training-episodes protocol, KuaiSim, 100k steps).
PAPER = {
    "kuairand": {"return_time": [2.382, 2.373, 1.947, 1.889, 1.786, 1.496], "retention": [0.151, 0.150, 0.154, 0.156, 0.159, 0.163],
                 "click_rate": [0.800, 0.801, 0.773, 0.762, 0.789, 0.805], "long_view_rate": [0.791, 0.795, 0.764, 0.757, 0.778, 0.794],
                 "like_rate": [0.852, 0.857, 0.812, 0.804, 0.831, 0.862]},
    "movielens": {"return_time": [2.258, 2.246, 1.893, 1.814, 1.723, 1.479], "retention": [0.141, 0.142, 0.153, 0.158, 0.160, 0.165],
                  "click_rate": [0.461, 0.468, 0.454, 0.448, 0.459, 0.473], "long_view_rate": [0.459, 0.463, 0.455, 0.453, 0.457, 0.464],
                  "like_rate": [0.568, 0.571, 0.541, 0.524, 0.561, 0.574]},
}


def paper_table(dataset: str) -> str:
    rows = PAPER[dataset]
    name = "KuaiRand-Pure" if dataset == "kuairand" else "ML-1M"
    lines = [f"Paper (GFN4Retention Table 2, {name}):", "", "| metric | " + " | ".join(METHODS) + " |",
             "|" + "---|" * (len(METHODS) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for m, vals in rows.items()]
    return "\n".join(lines) + "\n"


def table(run_dirs: list[str], out: Path, reference_among: list[str], extra: str = "") -> str:
    return write_comparison(run_dirs, out, reference_among=reference_among, extra=extra)[0]


def learned_bounds(bundle: str, out: Path) -> str:
    """Measured bounds of the learned preset's leverage (no closed form: its return law depends on the state the
    policy shapes; ``retentionrl.bench.leverage``). Cached in ``out/bounds.md`` (per bundle fingerprint)."""
    sim = Simulator.load(bundle)
    cache = out / "bounds.md"
    if cache.is_file() and sim.short_fingerprint in cache.read_text():
        return cache.read_text()
    ev = EvalConfig(preset="learned", n_users=256, n_episodes=512, seeds=[10_000, 10_001, 10_002])
    text = bounds_markdown(measured_bounds(sim, ev), sim, "the learned preset",
                           columns=("return_time", "retention", "click_rate"))
    write_text_atomic(cache, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    grid_arguments(ap, ["kuairand", "movielens", "ablations", "sweep", "random-state", "terminal-step", "learned"],
                   {"kuairand": str(REPO / "bundles" / "kuairand-pure"), "movielens": str(REPO / "bundles" / "ml-100k")})
    args = ap.parse_args()
    results = REPO / "docs" / "results"
    kr_runs = REPO / "runs" / "baselines-kuairand"

    def grid(configs, seeds, root, bundle) -> list[str]:
        return run_selected(cells(configs, seeds, root, bundle), args.workers, args.only, args.no_run)

    if "kuairand" in args.parts:
        done = grid([TRAIN / f"{m}-kuaisim.yaml" for m in METHODS], args.seeds, kr_runs, args.kuairand_bundle)
        print(table(done, results / "retention_kuairand", [f"{m}-kuaisim" for m in BASELINES], paper_table("kuairand")))
    if "movielens" in args.parts:
        done = grid([TRAIN / "movielens" / f"{m}-movielens.yaml" for m in [*METHODS, "ranking", "random"]], args.seeds,
                    REPO / "runs" / "movielens-100k", args.movielens_bundle)
        print(table(done, results / "retention_movielens", [f"{m}-movielens" for m in BASELINES], paper_table("movielens")))
    if "ablations" in args.parts:
        for method, variants in (("rlur", ["no-rnd", "no-normalization", "no-groups", "no-soft-regularization"]),
                                 ("gfn4retention", ["ncd", "nif", "sif", "terminal-state"])):
            configs = [TRAIN / f"{method}-kuaisim.yaml", *(TRAIN / "ablations" / f"{method}-kuaisim-{v}.yaml" for v in variants)]
            done = grid(configs, args.ablation_seeds, kr_runs, args.kuairand_bundle)
            print(table(done, results / f"retention_ablations_{method}", [f"{method}-kuaisim"]))
    if "sweep" in args.parts:
        base = TRAIN / "gfn4retention-kuaisim.yaml"
        variants = [(f"gfn4retention-kuaisim-lam{lam:g}", base, {"agent": {"lam": lam}}) for lam in LAMBDAS if lam != 1.0]
        done = grid([base, *variants], args.ablation_seeds, kr_runs, args.kuairand_bundle)
        runs = load_runs(done)
        values = {"gfn4retention-kuaisim": 1.0, **{v[0]: v[2]["agent"]["lam"] for v in variants}}
        out = results / "retention_lambda_sweep"
        md = sweep_plot(runs, values, out / "lambda_sweep.png", "lambda")
        write_text_atomic(out / "lambda_sweep.md", md)
        print(md)
    if "terminal-step" in args.parts:
        base = TRAIN / "gfn4retention-kuaisim.yaml"
        gfn = [("gfn4retention-kuaisim", base, {}),
               *((f"gfn4retention-kuaisim-{v}", TRAIN / "ablations" / f"gfn4retention-kuaisim-{v}.yaml", {})
                 for v in ("ncd", "nif", "sif")),
               *((f"gfn4retention-kuaisim-lam{lam:g}", base, {"agent": {"lam": lam}}) for lam in LAMBDAS if lam != 1.0)]
        variants = [(f"{label}-{step}", config, merge(over, {"agent": {"terminal_step": step}}))
                    for label, config, over in gfn for step in ("transition", "state")]
        done = grid(variants, args.ablation_seeds, REPO / "runs" / "gfn-terminal-step", args.kuairand_bundle)
        print(table(done, results / "retention_terminal_step", ["gfn4retention-kuaisim-state"]))
    if "learned" in args.parts:
        over = {"preset": "learned"}
        variants = [(f"{m}-learned", TRAIN / f"{m}.yaml", over) for m in LEARNED]
        done = grid(variants, args.seeds, REPO / "runs" / "learned-kuairand", args.kuairand_bundle)
        out = results / "retention_learned"
        print(table(done, out, LEARNED_BASELINES, learned_bounds(args.kuairand_bundle, out)))
    if "random-state" in args.parts:
        over = {"env": {"returns": {"personal": "random_state"}}}
        variants = [(f"{Path(m).name}-random-state", TRAIN / f"{m}.yaml", over) for m in RANDOM_STATE]
        done = grid(variants, args.ablation_seeds, kr_runs, args.kuairand_bundle)
        print(table(done, results / "retention_random_state", ["random-kuaisim-random-state"]))


if __name__ == "__main__":
    main()
