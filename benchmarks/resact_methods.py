"""ResAct beside the offline RL baselines of its slides (Tables 2-3), on ResAct's three tasks, and its ablations.

    python benchmarks/resact_methods.py [--parts kuairand learned headroom movielens ablations cql-alpha]
                                        [--tasks return_time session_length both] [--workers 2] [--only GLOB] [--no-run]

Every cell is an offline run (``configs/train/offline/``): all methods learn from the same logs of the Gaussian
"online-serving" behaviour around click-ranking (propensities stored) and are scored by the frozen evaluation.
The tasks (``training/tasks.py``) replace the session-end reward by ResAct's r(δ), r(η) or their sum; the RL
methods then train with ``retention_weight 1`` (the task reward is 0-5 per session already).

* ``kuairand``: ResAct, DDPG, TD3, TD3+BC, BCQ, IQL, IL (BC), IL-CVAE (+ CQL) x 5 seeds on
  ``bundles/kuairand-pure``, KuaiSim preset with the *satisfaction* temper, so that session length responds to
  the policy (the plain KuaiSim temper fixes every session at 5 requests) -> ``docs/results/resact_kuaisim_<task>/``,
  each table with the measured leverage of session length and return time beside it (``bench/leverage.py``).
* ``learned``: the same on the learned preset (leave and return models fitted to the log) at slate 1, the
  slate its leave model is calibrated for: at the default slate of 6 a learned-preset session almost always ends
  after its first request, and the measured session-length range of the fixed policies is 1.017-1.037
  requests (1.73-2.11 at slate 1; 2.00-5.00 with the satisfaction temper) -> ``resact_learned_<task>/``.
* ``headroom``: the kuairand part with ``satisfaction_gain`` 0.7 (max 30 requests): without a gain the temper caps a
  session at 5 requests, where the logging policy already is, so the session-length task has nothing to improve
  (its logged r(η) is 1 for 99.8% of sessions) -> ``resact_kuaisim_gain_<task>/``.
* ``movielens``: the return-time task on ``bundles/ml-100k`` (the slides' Table 2 uses ML-1M ratings, which are
  not available here) -> ``resact_movielens/``.
* ``ablations``: ResAct w/o residual (Δ = 0, the CVAE's candidates selected by Q1), w/o expressiveness, w/o
  conciseness, and the number of latent samples n in {1, 5, 10, 20} x 3 seeds, return-time task, KuaiSim
  (satisfaction) -> ``resact_ablations/``.
* ``cql-alpha``: CQL's conservative weight alpha_cql in {0, 1, 5 (the default), 10} x 3 seeds beside IL (BC),
  return-time task, KuaiSim (satisfaction) -> ``resact_cql_alpha/``. On the synthetic case of
  tests/test_offline_rl.py alpha_cql 5 clones the Gaussian logs (4.21 days, = BC) while alpha 0 reaches the
  optimum (1.6) — and on bimodal logs the same alpha 0 leaves the data (4.3) where alpha 5 takes the better mode:
  this part measures where the benchmark's logs sit between the two.

t-tests are against the best baseline (by return time), as in the papers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retentionrl.agents.cql import CQLConfig
from retentionrl.bench.grid import cells, grid_arguments, run_selected
from retentionrl.bench.leverage import bounds_markdown, measured_bounds
from retentionrl.bench.report import load_runs, sweep_plot, write_comparison
from retentionrl.config import merge
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.simulator.bundle import Simulator
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "configs" / "train" / "offline"
METHODS = ["resact", "ddpg", "td3", "td3bc", "bcq", "iql", "bc", "il_cvae", "cql"]
BASELINES = [m for m in METHODS if m != "resact"]
RL = {"resact", "ddpg", "td3", "td3bc", "bcq", "iql", "cql"}  # methods that read the reward
TASKS = ["return_time", "session_length", "both"]
SATISFACTION = {"env": {"leave": {"kind": "satisfaction"}}}
# With a gain the temper lasts longer after rewarding slates (RLIV-UA's KuaiSim part): room above the logged mode,
# which sits at the gain-0 temper's cap of 5 requests (the session-length task then has no headroom).
HEADROOM = {"env": {"leave": {"kind": "satisfaction", "satisfaction_gain": 0.7, "max_requests": 30}}}
# The task tables' parts: (label suffix, preset, the overrides every cell of the part shares).
TABLES = {"kuairand": ("kuaisim", "kuaisim", SATISFACTION),
          "learned": ("learned", "learned", {"preset": "learned", "env": {"slate_size": 1}}),
          "headroom": ("kuaisim_gain", "kuaisim", HEADROOM)}
N_LATENTS = [1, 5, 10, 20]
CQL_ALPHAS = [0.0, 1.0, 5.0, 10.0]  # includes the default, CQLConfig.alpha_cql (the kuairand part's cells)
# ResAct slides, Table 2 (MovieLens-1M, return-time task, NCIS), mean ± 95% CI.
TABLE2 = {"DDPG": "1.7429 ± 0.0545", "TD3": "1.7363 ± 0.0546", "TD3_BC": "1.7135 ± 0.0541",
          "BCQ": "1.7898 ± 0.0320", "IQL": "1.7360 ± 0.0546", "IL": "1.7485 ± 0.0310", "IL_CVAE": "1.7344 ± 0.0316"}


def paper_table2() -> str:
    lines = ["ResAct slides, Table 2 (ML-1M, return-time task, NCIS estimate; ResAct's own row did not survive the "
             "text extraction):", "", "| method | return |", "|---|---|"]
    return "\n".join(lines + [f"| {m} | {v} |" for m, v in TABLE2.items()]) + "\n"


def task_variants(task: str, over: dict, suffix: str) -> list:
    """(label, config, overrides) of every method on ``task``: the RL methods learn from the task reward alone."""
    out = []
    for m in METHODS:
        o = {**over, "task": task}
        if m in RL:
            o = {**o, "agent": {"retention_weight": 1.0}}
        out.append((f"{m}-{suffix}-{task}", OFFLINE / f"{m}-kuaisim.yaml", o))
    return out


def leverage(bundle: str, preset: str, env: dict, out: Path) -> str:
    """Measured session-length and return-time leverage under the table's protocol (cached per fingerprint)."""
    sim = Simulator.load(bundle)
    cache = out / "leverage.md"
    if cache.is_file() and sim.short_fingerprint in cache.read_text():
        return cache.read_text()
    ev = EvalConfig(preset=preset, n_users=256, n_episodes=512, seeds=[10_000, 10_001, 10_002], env_overrides=env)
    rows = measured_bounds(sim, ev)
    text = bounds_markdown(rows, sim, f"the {preset} preset" + (f" with {env}" if env else ""), metric="session_length")
    write_text_atomic(cache, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    grid_arguments(ap, ["kuairand", "learned", "headroom", "movielens", "ablations", "cql-alpha"],
                   {"kuairand": str(REPO / "bundles" / "kuairand-pure"), "movielens": str(REPO / "bundles" / "ml-100k")})
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    args = ap.parse_args()
    results, runs = REPO / "docs" / "results", REPO / "runs"

    def grid(variants, seeds, root, bundle) -> list[str]:
        return run_selected(cells(variants, seeds, root, bundle), args.workers, args.only, args.no_run)

    def table(done, out: Path, suffix: str, task: str, extra: str = "") -> None:
        if not done:
            print(f"{out.name}: no finished cells yet")
            return
        md = write_comparison(done, out, reference_among=[f"{m}-{suffix}-{task}" for m in BASELINES], extra=extra)[0]
        print(md)

    for part, (suffix, preset, over) in TABLES.items():
        if part not in args.parts:
            continue
        for task in args.tasks:
            out = results / f"resact_{suffix}_{task}"
            done = grid(task_variants(task, over, suffix), args.seeds, runs / f"resact-{suffix}", args.kuairand_bundle)
            env = over.get("env", {})
            table(done, out, suffix, task, leverage(args.kuairand_bundle, preset, env, out) if done else "")
    if "movielens" in args.parts:
        done = grid(task_variants("return_time", {"preset": "kuaisim"}, "movielens"), args.seeds,
                    runs / "resact-movielens", args.movielens_bundle)
        table(done, results / "resact_movielens", "movielens", "return_time", paper_table2())
    if "ablations" in args.parts:
        base = OFFLINE / "resact-kuaisim.yaml"
        over = {**SATISFACTION, "task": "return_time", "agent": {"retention_weight": 1.0}}
        variants = [("resact", {}), ("resact-no-residual", {"residual": False}),
                    ("resact-no-expressiveness", {"expressiveness": False}),
                    ("resact-no-conciseness", {"conciseness": False}),
                    *((f"resact-n{n}", {"n_candidates": n}) for n in N_LATENTS if n != 10)]
        done = grid([(label, base, {**over, "agent": {**over["agent"], **a}}) for label, a in variants],
                    args.ablation_seeds, runs / "resact-ablations", args.kuairand_bundle)
        if done:
            print(write_comparison(done, results / "resact_ablations", reference_among=["resact"])[0])
    if "cql-alpha" in args.parts:
        # The default alpha and BC keep the labels (and so the cells) of the kuairand part's return-time table.
        variants = [v for v in task_variants("return_time", SATISFACTION, "kuaisim") if v[0].split("-")[0] in ("bc", "cql")]
        cql = next(v for v in variants if v[0].startswith("cql-"))
        values = {cql[0]: CQLConfig.alpha_cql}
        for alpha in CQL_ALPHAS:
            if alpha != CQLConfig.alpha_cql:
                label = f"{cql[0]}-alpha{alpha:g}"
                variants.append((label, cql[1], merge(cql[2], {"agent": {"alpha_cql": alpha}})))
                values[label] = alpha
        done = grid(variants, args.ablation_seeds, runs / "resact-kuaisim", args.kuairand_bundle)
        if done:
            out = results / "resact_cql_alpha"
            print(write_comparison(done, out, reference_among=[v[0] for v in variants])[0])
            md = sweep_plot({m: r for m, r in load_runs(done).items() if m in values}, values,
                            out / "alpha_sweep.png", "alpha_cql")
            write_text_atomic(out / "alpha_sweep.md", md)
            print(md)


if __name__ == "__main__":
    main()
