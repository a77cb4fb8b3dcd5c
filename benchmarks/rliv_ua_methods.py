"""RLIV-UA beside the baselines of its Tables 2-3, with its variants, on the user and author metrics.

    python benchmarks/rliv_ua_methods.py [--parts kuaisim learned] [--workers 2] [--only GLOB] [--no-run]

Every cell acts in the same environment: a ranking stage passes each user's 100 best items by the response
model's predicted reward (``candidate_source: ranked``; the paper's N < 300), the env keeps user-author pair
counts (``ua_counts``), the policy decides the slate among them. Methods: RankingModel (DeepFM, supervised on
logged clicks), discrete CQL (offline, the same logs), DQN (item level, online), TD3 and RLUR (fusion weights
over the candidates' predicted responses, online), RLIV-UA and its variants w/o MT (the watch-time tower alone),
w/o SL (no auxiliary reward head), w/o MT & SL. Without a gift label, w/o AL & SL is w/o SL. 5 seeds each.

* ``kuaisim``: KuaiSim preset with the *satisfaction* temper, sessions ending sooner after unrewarding slates
  and, with ``satisfaction_gain`` 0.7, lasting longer after rewarding ones (up to ~14 requests; ``max_requests``
  30 is a safety cap): among pre-ranked candidates almost every slate beats the average logged exposure, so the
  plain temper (gain 0) holds every session at its 5-request maximum (measured: 4.95-4.99 for every fixed
  policy), slate 6 -> ``docs/results/rliv_ua_kuaisim/``;
* ``learned``: the learned preset (leave and return models fitted to the log) at slate 1, the slate its leave
  model is calibrated for (at 6 a session almost always ends after one request); a slate of one has no
  intra-list diversity, so that column is absent -> ``docs/results/rliv_ua_learned/``.

Each table has the measured leverage of session length beside it (the range fixed one-behaviour policies reach,
``bench/leverage.py``) and the paper's Tables 2-3. The reference of the t-tests is the best baseline by session
length.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retentionrl.bench.grid import cells, grid_arguments, run_selected
from retentionrl.bench.leverage import bounds_markdown, measured_bounds
from retentionrl.bench.report import write_comparison
from retentionrl.config import merge
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.simulator.bundle import Simulator
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
PAIRS = {"candidates": 100, "candidate_source": "ranked", "ua_counts": True}
# Two periodic evaluations (steps 1,000 and 2,000) instead of the other tables' four: in this env one evaluation
# of an item-level policy is ~1 minute (256 users x 100 candidates scored per request, sessions of up to ~14
# requests), and a cell must stay within the 5-minute budget.
PARTS = {
    # satisfaction temper that better-than-average slates also feed (gain), so that session length can grow
    "kuaisim": {"preset": "kuaisim", "eval_every": 1000,
                "env": {"leave": {"kind": "satisfaction", "satisfaction_gain": 0.7, "max_requests": 30}, **PAIRS}},
    "learned": {"preset": "learned", "eval_every": 1000, "env": {"slate_size": 1, **PAIRS}},
}
BASELINES = {"ranking_model": CONFIGS / "rliv_ua" / "deepfm-kuaisim.yaml",
             "cql": CONFIGS / "rliv_ua" / "cql_discrete-kuaisim.yaml",
             "dqn": CONFIGS / "dqn-kuaisim.yaml", "td3": CONFIGS / "td3-kuaisim.yaml",
             "rlur": CONFIGS / "rlur-kuaisim.yaml"}
RLIV = CONFIGS / "rliv_ua" / "rliv_ua-kuaisim.yaml"
VARIANTS = {"rliv_ua": {}, "rliv_ua-no-mt": {"tasks": ["watch_time"]},
            "rliv_ua-no-sl": {"auxiliary": False}, "rliv_ua-no-mt-sl": {"tasks": ["watch_time"], "auxiliary": False}}
# RLIV-UA, Tables 2-3 (offline simulator on KuaiRand): session length, watch time, CTR, diversity.
PAPER = {"RankingModel": (2.0132, 59.4812, 0.5948, 0.0629), "CQL": (2.2660, 58.0753, 0.5125, 0.1727),
         "DQN": (4.0610, 49.5454, 0.2247, 0.7477), "TD3": (4.7820, 52.7157, 0.2228, 0.8500),
         "RLUR": (6.6810, 151.0550, 0.4519, 0.7206), "RLIV-UA (w/o MT & SL)": (7.2940, 188.0499, 0.5229, 0.7994),
         "RLIV-UA (w/o MT)": (9.2800, 248.1804, 0.5340, 0.8746), "RLIV-UA": (12.8860, 377.4867, 0.5015, 0.8827)}


def paper_tables() -> str:
    lines = ["RLIV-UA, Tables 2-3 (the paper's offline simulator on KuaiRand; units as printed there):", "",
             "| method | session length | watch time | CTR | diversity |", "|---|---|---|---|---|"]
    return "\n".join(lines + [f"| {m} | " + " | ".join(f"{x:g}" for x in v) + " |" for m, v in PAPER.items()]) + "\n"


def variants(part: str) -> list:
    over = PARTS[part]
    out = [(f"{m}-{part}", cfg, over) for m, cfg in BASELINES.items()]
    return out + [(f"{v}-{part}", RLIV, merge(over, {"agent": a})) for v, a in VARIANTS.items()]


def leverage(bundle: str, part: str, out: Path) -> str:
    """Session-length (and return-time) leverage of fixed fusion policies in the part's environment (cached)."""
    sim = Simulator.load(bundle)
    cache = out / "leverage.md"
    if cache.is_file() and sim.short_fingerprint in cache.read_text():
        return cache.read_text()
    over = PARTS[part]
    ev = EvalConfig(preset=over["preset"], n_users=256, n_episodes=512, seeds=[10_000, 10_001, 10_002],
                    env_overrides=over["env"])
    text = bounds_markdown(measured_bounds(sim, ev), sim, f"the RLIV-UA table's environment ({part}: {over})",
                           metric="session_length")
    write_text_atomic(cache, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    grid_arguments(ap, list(PARTS), {"kuairand": str(REPO / "bundles" / "kuairand-pure")})
    args = ap.parse_args()
    for part in args.parts:
        out = REPO / "docs" / "results" / f"rliv_ua_{part}"
        done = run_selected(cells(variants(part), args.seeds, REPO / "runs" / f"rliv-ua-{part}", args.kuairand_bundle),
                            args.workers, args.only, args.no_run)
        if not done:
            print(f"{out.name}: no finished cells yet")
            continue
        extra = leverage(args.kuairand_bundle, part, out) + "\n" + paper_tables()
        md = write_comparison(done, out, reference_among=[f"{m}-{part}" for m in BASELINES], extra=extra,
                              columns="author")[0]
        print(md)


if __name__ == "__main__":
    main()
