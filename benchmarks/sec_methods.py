"""SEC beside BC and the baselines of the retention tables, its ablations (beside the paper's Table 2), the λ
sweep (the paper's Fig. 6) and the number of clusters.

    python benchmarks/sec_methods.py [--parts kuairand learned movielens ablations sweep clusters] [--workers 2]
                                     [--only 'sec*' 'bc*'] [--no-run]

Every part is a resumable grid (``retentionrl.bench.grid``). The baseline rows (TD3, SAC, DIN, CEM, RLUR,
GFN4Retention) are the same cells as ``benchmarks/retention_methods.py``'s (same configs, seeds and runs
directories), so a table reuses whatever that benchmark has finished; ``--only 'sec*' 'bc*'`` runs only SEC's
and BC's cells and leaves the baselines to it. Writes ``docs/results/sec_<part>/``.

* ``kuairand``: SEC, BC (on SEC's logs), click-ranking and random x 5 seeds beside the baselines, KuaiSim
  preset, SEC's Table 1 beside.
* ``learned``: the same on the learned preset (leave and return laws fitted to the logs).
* ``movielens``: the same on ``bundles/ml-100k``.
* ``ablations``: SEC, w/o multi-level, w/o AER, and the nearest level instead of the first within δ
  (``delta_fraction: 0``) x 3 seeds, Table 2 beside.
* ``sweep``: λ in {0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1} x 3 seeds. The paper's Fig. 6 gives its return
  times (≈1.45 at a low λ, best 1.411, 1.58 at a large one) but not its λ values, which did not survive the
  text extraction; the grid spans three decades around the paper's default 0.01.
* ``clusters``: C_k upper bound in {1, 10, 100, 1000} (with one state per cluster allowed) x 3 seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retentionrl.bench.grid import cells, grid_arguments, run_selected
from retentionrl.bench.report import load_runs, sweep_plot, write_comparison
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "configs" / "train"
BASELINES = ["td3", "sac", "din", "cem"]
RETENTION = ["rlur", "gfn4retention"]
LAMBDAS = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
CLUSTERS = [1, 10, 100, 1000]
# SEC Table 1 (KuaiRand-Pure, KuaiSim) and Table 2 (ablations).
TABLE1 = {"TD3": (2.382, 0.800, 0.791, 0.852), "SAC": (2.373, 0.801, 0.795, 0.857), "DIN": (1.947, 0.773, 0.764, 0.812),
          "CEM": (1.889, 0.762, 0.757, 0.804), "RLUR": (1.786, 0.789, 0.778, 0.831), "GFN": (1.496, 0.805, 0.794, 0.885),
          "SEC": (1.411, 0.833, 0.825, 0.806)}
TABLE2 = {"SEC (full)": (1.411, 0.833, 0.825), "w/o multi-level": (1.423, 0.821, 0.815),
          "w/o action entropy": (1.449, 0.836, 0.805)}


def paper_table1() -> str:
    lines = ["Paper (SEC Table 1, KuaiRand-Pure, KuaiSim):", "", "| model | return time | click | long view | like |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for m, vals in TABLE1.items()]
    return "\n".join(lines) + "\n"


def paper_table2() -> str:
    lines = ["Paper (SEC Table 2, KuaiRand-Pure):", "", "| variant | return day | click | long view |", "|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for m, vals in TABLE2.items()]
    return "\n".join(lines) + "\n"


def table(run_dirs: list[str], out: Path, reference_among: list[str], extra: str = "") -> str:
    return write_comparison(run_dirs, out, reference_among=reference_among, extra=extra)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    grid_arguments(ap, ["kuairand", "learned", "movielens", "ablations", "sweep", "clusters"],
                   {"kuairand": str(REPO / "bundles" / "kuairand-pure"), "movielens": str(REPO / "bundles" / "ml-100k")})
    args = ap.parse_args()
    results = REPO / "docs" / "results"
    runs = REPO / "runs"

    def grid(configs, seeds, root, bundle) -> list[str]:
        return run_selected(cells(configs, seeds, root, bundle), args.workers, args.only, args.no_run)

    # SEC, BC on the same logs, and the two fixed policies (reference rows, not candidates for the t-test's reference).
    sec = [TRAIN / "sec-kuaisim.yaml", TRAIN / "bc-kuaisim-peruser.yaml", TRAIN / "ranking-kuaisim.yaml",
           TRAIN / "random-kuaisim.yaml"]
    base = [TRAIN / f"{m}-kuaisim.yaml" for m in [*BASELINES, *RETENTION]]
    if "kuairand" in args.parts:
        done = grid(sec, args.seeds, runs / "sec-kuairand", args.kuairand_bundle)
        done += grid(base, args.seeds, runs / "baselines-kuairand", args.kuairand_bundle)
        print(table(done, results / "sec_kuairand", [f"{m}-kuaisim" for m in BASELINES] + ["bc-kuaisim-peruser"],
                    paper_table1()))
    if "learned" in args.parts:
        over = {"preset": "learned"}
        done = grid([(f"{p.stem}-learned", p, over) for p in sec], args.seeds, runs / "sec-learned",
                    args.kuairand_bundle)
        # The learned-preset baselines as benchmarks/retention_methods.py --parts learned labels them.
        done += grid([(f"{p.stem}-learned", p, over) for p in base], args.seeds, runs / "learned-kuairand",
                     args.kuairand_bundle)
        print(table(done, results / "sec_learned", [f"{m}-kuaisim-learned" for m in BASELINES]
                    + ["bc-kuaisim-peruser-learned"]))
    if "movielens" in args.parts:
        ml = TRAIN / "movielens"
        done = grid([ml / "sec-movielens.yaml", ("bc-movielens-peruser", TRAIN / "bc-kuaisim-peruser.yaml", {}),
                     ml / "ranking-movielens.yaml", ml / "random-movielens.yaml"],
                    args.seeds, runs / "sec-movielens", args.movielens_bundle)
        done += grid([ml / f"{m}-movielens.yaml" for m in [*BASELINES, *RETENTION]], args.seeds,
                     runs / "movielens-100k", args.movielens_bundle)
        print(table(done, results / "sec_movielens", [f"{m}-movielens" for m in BASELINES] + ["bc-movielens-peruser"]))
    if "ablations" in args.parts:
        configs = [TRAIN / "sec-kuaisim.yaml", *(TRAIN / "ablations" / f"sec-kuaisim-{v}.yaml"
                                                 for v in ("single-level", "no-aer")),
                   ("sec-kuaisim-nearest-level", TRAIN / "sec-kuaisim.yaml", {"agent": {"delta_fraction": 0.0}})]
        done = grid(configs, args.ablation_seeds, runs / "sec-kuairand", args.kuairand_bundle)
        print(table(done, results / "sec_ablations", ["sec-kuaisim"], paper_table2()))
    if "sweep" in args.parts:
        variants = [(f"sec-kuaisim-lam{lam:g}", TRAIN / "sec-kuaisim.yaml", {"agent": {"lam": lam}}) for lam in LAMBDAS]
        done = grid(variants, args.ablation_seeds, runs / "sec-kuairand", args.kuairand_bundle)
        values = {v[0]: max(v[2]["agent"]["lam"], 1e-4) for v in variants}  # λ = 0 drawn at 1e-4 (log axis)
        out = results / "sec_lambda_sweep"
        md = sweep_plot(load_runs(done), values, out / "lambda_sweep.png", "lambda (0 drawn at 1e-4)",
                        metrics=("return_time", "click_rate", "diversity_session"), log_x=True)
        write_text_atomic(out / "lambda_sweep.md", md)
        print(md)
    if "clusters" in args.parts:
        variants = [(f"sec-kuaisim-c{c}", TRAIN / "sec-kuaisim.yaml",
                     {"agent": {"n_clusters": c, "states_per_cluster": 1}}) for c in CLUSTERS]
        done = grid(variants, args.ablation_seeds, runs / "sec-kuairand", args.kuairand_bundle)
        values = {v[0]: v[2]["agent"]["n_clusters"] for v in variants}
        out = results / "sec_clusters"
        md = sweep_plot(load_runs(done), values, out / "clusters.png", "clusters per level (upper bound)",
                        log_x=True)
        write_text_atomic(out / "clusters.md", md)
        print(md)


if __name__ == "__main__":
    main()
