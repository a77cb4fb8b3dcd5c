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
* ``bc_all`` — behaviour cloning of the cluster on every user's training rows (one head, no AER);
* ``sec`` — discrete SEC: levels 1-3 of experts, shared encoder, one head per level, AER, adaptive selection.
* ``sec_nearest`` — the same with ``delta_fraction: 0``: every state goes to its nearest level (the paper's
  first-within-δ rule sends nearly every state to level 1 here; this row says whether that is what costs SEC).

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
from tqdm.auto import tqdm

from retentionrl.agents import make_agent
from retentionrl.agents.base import FixedWeightsAgent
from retentionrl.agents.sec import SEC, ClusterRanker
from retentionrl.data import load_dataset
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.evaluation.stats import compare_runs, mean_ci
from retentionrl.simulator.bundle import Simulator
from retentionrl.spaces import obs_from_batch
from retentionrl.training.offline import EpochSampler
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


def fit_discrete(ctx: Context, agent_cfg: dict, epochs: int) -> SEC:
    """A discrete SEC (classes = item clusters) fitted on the training rows it keeps (``prepare_logs``)."""
    agent = make_agent("sec", ctx.sim, {"action": "discrete", "n_actions": ctx.clusters.n_clusters, **agent_cfg},
                       seed=ctx.seed)
    rows = agent.prepare_logs(dict(ctx.train))
    sampler = EpochSampler(len(rows["user"]), agent.batch_size, ctx.seed + 3)
    for _ in tqdm(range(epochs * sampler.batches_per_epoch), desc="fit", disable=None):
        idx = sampler.next()
        agent.update({k: v[idx] for k, v in rows.items()})
    return agent


def class_scores(agent: SEC, rows: dict[str, Tensor]) -> Tensor:
    """(N, C) class probabilities of ``rows``' states, in chunks."""
    n = len(rows["user"])
    return torch.cat([agent.class_probs(obs_from_batch({k: v[i:i + 4096] for k, v in rows.items()}))
                      for i in range(0, n, 4096)])


#: the learned policies: name -> SEC config (BC on all users = one level holding every user with a return)
LEARNED = {"bc_all": lambda sim: {"levels": sim.max_return_day, "multi_level": False, "lam": 0.0},
           "sec": lambda sim: {}, "sec_nearest": lambda sim: {"delta_fraction": 0.0}}
_FITTED: dict[tuple[str, int], SEC] = {}


def learned(name: str, epochs: int) -> Callable[[Context], Tensor]:
    def policy(ctx: Context) -> Tensor:
        if (name, ctx.seed) not in _FITTED:
            _FITTED[name, ctx.seed] = fit_discrete(ctx, LEARNED[name](ctx.sim), epochs)
        return class_scores(_FITTED[name, ctx.seed], ctx.test)
    return policy


def simulate(sim: Simulator, clusters: ItemClusters, seeds: list[int], betas: list[float], presets: list[str],
             say: Callable[[str], None]) -> None:
    """The fitted SEC and BC-on-all-users as items-mode rankers (:class:`ClusterRanker`) in the simulator, frozen,
    beside click-ranking (β = 0), under the standard protocol; Welch t-tests of SEC against BC at the same β."""
    metrics = [("return_time", "return time ↓", True), ("retention", "retention ↑", False),
               ("click_rate", "click ↑", False), ("diversity_session", "tags / session ↑", False),
               ("disagreement_return", "disagree. return", True)]
    for preset in presets:
        ev = EvalConfig(preset=preset)
        ranking = evaluate_policy(FixedWeightsAgent(), sim, ev)["mean"]
        results: dict[str, list[dict]] = {"click-ranking": [ranking]}
        for beta in betas:
            for name in LEARNED:
                results[f"{name} β={beta:g}"] = [
                    evaluate_policy(ClusterRanker(_FITTED[name, s], clusters.labels, sim.response, beta), sim, ev)["mean"]
                    for s in seeds]
        say(f"Preset `{preset}` (bundle {sim.short_fingerprint}; {ev.n_episodes} held-out user episodes x "
            f"{len(ev.seeds)} evaluation seeds; training seeds {', '.join(map(str, seeds))}):")
        say()
        say("| policy | seeds | " + " | ".join(m[1] for m in metrics) + " |")
        say("|---|---|" + "---|" * len(metrics))
        cols = {}
        for key, _, lower in metrics:
            for beta in betas:
                vals = {f"{n} β={beta:g}": [r[key] for r in results[f"{n} β={beta:g}"]] for n in LEARNED}
                for row in compare_runs(vals, f"bc_all β={beta:g}", lower):
                    cols[row["method"], key] = row
        for name, rows in results.items():
            cells = []
            for key, _, _ in metrics:
                if name == "click-ranking":
                    cells.append(f"{rows[0][key]:.3f}")
                    continue
                r = cols[name, key]
                ci = f" ± {r['half_width']:.3f}" if r["half_width"] is not None else ""
                cells.append(f"{r['mean']:.3f}{ci}{r['mark']}")
            say(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
        say()
        say("Mean ± 95% CI over training seeds; * p<0.05, ** p<0.01, *** p<0.001 (Welch, SEC against BC on all "
            "users at the same β).")
        say()


POLICIES: dict[str, Callable[[Context], Tensor | None]] = {
    "popularity": popularity, "expert popularity": expert_popularity, "history frequency": history_frequency,
}


def _level_shares(agent: SEC, rows: dict[str, Tensor]) -> Tensor:
    obs = obs_from_batch(rows)
    with torch.no_grad():
        k = agent.levels_for(obs, agent.net.enc(obs))
    return torch.bincount(k, minlength=agent.K).float() / len(k)


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
    ap.add_argument("--epochs", type=int, default=2, help="passes over the training rows of BC and SEC")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds of BC and SEC")
    ap.add_argument("--simulate", action="store_true", help="also evaluate them as rankers in the simulator")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="cluster weights (simulate)")
    ap.add_argument("--presets", nargs="+", default=["kuaisim", "learned"], help="simulator presets (simulate)")
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
    for name, policy in {**POLICIES, **{n: learned(n, args.epochs) for n in LEARNED}}.items():
        cells = []
        for g, rows_g in groups.items():
            accs = {k: [] for k in KS}
            for seed in (args.seeds if name in LEARNED else [args.seed]):
                ctx = Context(sim, clusters, train, rows_g, retention, experts, args.expert_max_day, seed)
                acc = topk_cluster_accuracy(policy(ctx), rows_g["action"], KS)
                for k in KS:
                    accs[k].append(acc[k])
            for k in KS:
                m = mean_ci(accs[k])
                cells.append(f"{m['mean']:.3f}" + (f" ± {m['half_width']:.3f}" if m["half_width"] is not None else ""))
        say(f"| {name} | " + " | ".join(cells) + " |")
    say()
    sec_agent = _FITTED["sec", args.seeds[0]]
    shares = {n: ", ".join(f"{k + 1}: {float(v):.2f}" for k, v in
                           enumerate(_level_shares(_FITTED[n, args.seeds[0]], groups["expert users"])))
              for n in ("sec", "sec_nearest")}
    say(f"BC on all users: one head over every user with an observed return; SEC: levels 1-3 by ceil(mean return "
        f"day), AER lambda {sec_agent.cfg.lam:g}; both {args.epochs} epochs, Adam {sec_agent.cfg.lr:g}, batch "
        f"{sec_agent.batch_size}. On the experts' test rows SEC's selection served levels {shares['sec']}, and "
        f"with the nearest level (delta_fraction 0) {shares['sec_nearest']} (seed {args.seeds[0]}). Learned rows: "
        f"mean ± 95% CI over training seeds {', '.join(map(str, args.seeds))}.")
    say()
    if args.simulate:
        simulate(sim, clusters, args.seeds, args.betas, args.presets, say)
    if args.out:
        write_text_atomic(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
