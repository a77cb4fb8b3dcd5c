"""Shadow replay: send a real log's requests to a running service and compare its rankings with what users did.

Each user-day of the replayed days (default: the log's last day, the response model's held-out day) is one
request, sent in time order of the day's first exposure: the user's raw features, their last ``history``
exposures before the day (item ids, behaviours, watch time; oldest first), the session context (sessions before
this day, days since the previous one) and, as the ranking stage's candidates, the items the user was actually
shown that day, each with the ranking stage's predicted probability per behaviour. The ranking stage is the
simulator bundle's response model (the best scorer the toolkit has: held-out-day click AUC 0.718 on the KuaiRand
slice against popularity's 0.658), applied to the user's state after the history — what a production ranker
passes on.

The report: over user-days with at least one positive, NDCG@k and recall@k of the clicked and of the long-viewed
items among the day's exposures, for the served ranking, the logged order (the order the user was shown them) and
the click ranking (candidates by predicted click probability), mean with a 95% CI (t interval over user-days), over
the user-days with at least ``min_candidates`` (2) candidates (all are sent; one candidate has one ranking).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn

from retentionrl.data import load_dataset
from retentionrl.data.schema import BEHAVIOURS, Interactions
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.stats import mean_ci
from retentionrl.serve.app import ServiceConfig, create_app
from retentionrl.serve.artifact import load_artifact
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.response import ResponseModel
from retentionrl.utils.io import write_json_atomic, write_text_atomic

TARGETS = ("click", "long_view")
ORDERS = ("served", "logged", "click_ranking")


@dataclass
class ReplayConfig:
    dataset: str = "kuairand-pure"
    data_dir: str | None = None
    days: int = 1  # the log's last `days` days
    history: int = 50  # history items per request
    k: int = 10  # NDCG@k, recall@k
    max_user_days: int | None = None  # replay only the first n user-days (time order)
    concurrency: int = 8
    min_candidates: int = 2  # user-days scored (all are sent): a single candidate has only one ranking


def raw_user_features(data: Interactions, u: int) -> dict[str, Any]:
    """User ``u``'s profile as raw values (categorical codes back to their values; 0 = missing -> None)."""
    uf = data.user_features
    out: dict[str, Any] = {}
    for col in uf.categorical:
        code = int(uf.frame.at[u, col])
        v = uf.vocab[col][code - 1] if code > 0 else None
        out[col] = v.item() if isinstance(v, np.generic) else v
    for col in uf.numeric:
        out[col] = float(uf.frame.at[u, col])
    return out


def build_requests(data: Interactions, sim: Simulator, cfg: ReplayConfig) -> tuple[list[dict], list[dict], dict]:
    """(request bodies, per request the labels and baseline orders, counts) for the replayed user-days."""
    log = data.log
    days = np.sort(log["day"].unique())
    replay_days = set(days[-cfg.days:].tolist())
    inputs = sim.inputs or {}
    if not inputs:
        raise RetentionRLError(f"{sim.path}: the ranking stage's bundle has no inputs.json (retentionrl simulator inputs)")
    item_of = {str(r): i for i, r in enumerate(inputs["item_ids"])}
    user_of = {str(r): i for i, r in enumerate(inputs["user_ids"])}
    model: ResponseModel = sim.response.eval()
    H = model.cfg.window
    iv = model.item_vectors().detach()
    user_col, item_col, day_col = (log[c].to_numpy() for c in ("user_id", "item_id", "day"))
    beh = log[list(BEHAVIOURS)].to_numpy(np.float32)
    watch = log["watch_time"].to_numpy(np.float32)
    ts = log["timestamp"].to_numpy()
    starts = np.flatnonzero(np.r_[True, (user_col[1:] != user_col[:-1]) | (day_col[1:] != day_col[:-1])])
    ends = np.r_[starts[1:], len(log)]
    user_first = np.r_[True, user_col[1:] != user_col[:-1]]
    first_row = np.maximum.accumulate(np.where(user_first, np.arange(len(log)), 0))  # the user's first row
    groups = [(s, e) for s, e in zip(starts, ends) if day_col[s] in replay_days]
    groups.sort(key=lambda g: ts[g[0]])
    if cfg.max_user_days is not None:
        groups = groups[: cfg.max_user_days]
    bodies, labels = [], []
    counts = {"user_days": 0, "skipped_unknown_user": 0, "candidates_unknown_to_ranker": 0, "exposures": 0}
    kept = []  # (first row, user, the ranker's user id, history rows, [(row, ranker item id)]) per user-day
    for s, e in groups:
        u = int(user_col[s])
        su = user_of.get(str(data.user_ids[u]))
        if su is None:
            counts["skipped_unknown_user"] += 1
            continue
        hist = np.arange(max(int(first_row[s]), s - max(H, cfg.history)), s)
        # the day's exposures, first showing of each item, in the order shown
        seen, rows = set(), []
        for r in range(s, e):
            if item_col[r] not in seen:
                seen.add(item_col[r])
                rows.append(r)
        cand = [(r, item_of.get(str(data.item_ids[item_col[r]]))) for r in rows]
        counts["candidates_unknown_to_ranker"] += sum(d is None for _, d in cand)
        cand = [(r, d) for r, d in cand if d is not None]
        if cand:
            kept.append((s, u, su, hist, cand))
    # The ranking stage: the response model's state after each user's last H known exposures, batched over
    # user-days (the history transformer is the cost), then each day's candidates' probabilities.
    items = np.zeros((len(kept), H), dtype=np.int64)
    tok_beh = np.zeros((len(kept), H, len(BEHAVIOURS)), dtype=np.float32)
    tok_watch = np.zeros((len(kept), H), dtype=np.float32)
    pad = np.ones((len(kept), H), dtype=bool)
    for j, (_, _, _, hist, _) in enumerate(kept):
        known = [(r, d) for r in hist[-H:] if (d := item_of.get(str(data.item_ids[item_col[r]]))) is not None]
        if known:
            n, hr = len(known), [r for r, _ in known]
            items[j, H - n:] = [d for _, d in known]
            tok_beh[j, H - n:], tok_watch[j, H - n:], pad[j, H - n:] = beh[hr], watch[hr], False
    resp = ResponseModel.token_features(torch.from_numpy(tok_beh), torch.from_numpy(tok_watch))
    users = torch.tensor([k[2] for k in kept], dtype=torch.long)
    with torch.no_grad():
        q = torch.cat([model.queries(model.init_cache(users[i:i + 256], torch.from_numpy(items[i:i + 256]), resp[i:i + 256],
                                                      torch.from_numpy(pad[i:i + 256]), iv).state)
                       for i in range(0, len(kept), 256)]) if kept else torch.zeros(0)  # (n, 8, D)
        for j, (s, u, _, hist, cand) in enumerate(kept):
            cd = torch.tensor([d for _, d in cand])
            probs = torch.sigmoid(model.score(q[j : j + 1, None], cd[None], iv)[0, 0, :, : len(BEHAVIOURS)])
            prev_days = np.unique(day_col[int(first_row[s]):s])
            body = {
                "user": {"features": raw_user_features(data, u)},
                "history": [{"item_id": _plain(data.item_ids[item_col[r]]),
                             "behaviours": {b: 1.0 for b, y in zip(BEHAVIOURS, beh[r]) if y > 0},
                             "watch_time": float(watch[r])} for r in hist[-cfg.history:]],
                "candidates": [{"item_id": _plain(data.item_ids[item_col[r]]),
                                "scores": dict(zip(BEHAVIOURS, p.tolist()))} for (r, _), p in zip(cand, probs)],
                "k": min(cfg.k, len(cand)),
                "context": {"session_index": int(len(prev_days)),
                            "days_since_last": float(day_col[s] - prev_days[-1]) if len(prev_days) else 0.0},
            }
            bodies.append(body)
            labels.append({
                "items": [c["item_id"] for c in body["candidates"]],
                **{t: [float(beh[r, BEHAVIOURS.index(t)]) for r, _ in cand] for t in TARGETS},
                "click_ranking": torch.argsort(probs[:, 0], descending=True, stable=True).tolist(),
            })
            counts["user_days"] += 1
            counts["exposures"] += len(cand)
    return bodies, labels, counts


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def ndcg_recall(order: list[int], rel: list[float], k: int) -> tuple[float, float] | None:
    """NDCG@k and recall@k of a ranking (candidate indices, best first) for 0/1 relevances; None without positives."""
    total = sum(rel)
    if total == 0:
        return None
    gains = [rel[i] for i in order[:k]]
    dcg = sum(g / math.log2(j + 2) for j, g in enumerate(gains))
    idcg = sum(1.0 / math.log2(j + 2) for j in range(int(min(total, k))))
    return dcg / idcg, sum(gains) / total


async def _send(url: str, bodies: list[dict], concurrency: int) -> tuple[list[dict | None], list[str]]:
    out: list[dict | None] = [None] * len(bodies)
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post("/v1/rank", json=bodies[i])
                if r.status_code == 200:
                    out[i] = r.json()
                else:
                    errors.append(f"request {i}: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return out, errors


class LocalServer:
    """A uvicorn server for one artifact on a free 127.0.0.1 port, in a background thread (a context manager)."""

    def __init__(self, artifact_dir: str | Path, cfg: ServiceConfig | None = None, port: int | None = None) -> None:
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(artifact_dir, cfg), host="127.0.0.1", port=port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 60:
                raise RetentionRLError(f"the local service did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def replay(artifact_dir: str | Path, cfg: ReplayConfig, out: str | Path, url: str | None = None,
           simulator: str | Path | None = None, log=print) -> dict[str, Any]:
    """Replay ``cfg``'s log against the service at ``url`` (None: one started here for ``artifact_dir``) and write
    ``report.md`` / ``report.json`` into ``out``. ``simulator``: the ranking stage's bundle (default: the one the
    artifact was trained on)."""
    art = load_artifact(artifact_dir)
    bundle = simulator or art.manifest["simulator"].get("path")
    if bundle is None:
        raise RetentionRLError(f"{artifact_dir}: no recorded simulator bundle for the ranking stage; pass --simulator")
    sim = Simulator.load(bundle)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    t0 = time.time()
    bodies, labels, counts = build_requests(data, sim, cfg)
    log(f"[replay] {counts['user_days']:,} user-days, {counts['exposures']:,} exposures ({time.time() - t0:.0f}s)")
    t1 = time.time()
    if url is None:
        with LocalServer(artifact_dir) as server:
            served, errors = asyncio.run(_send(server.url, bodies, cfg.concurrency))
    else:
        served, errors = asyncio.run(_send(url, bodies, cfg.concurrency))
    seconds = time.time() - t1
    scores: dict[str, dict[str, list[float]]] = {t: {f"{o}_{m}": [] for o in ORDERS for m in ("ndcg", "recall")}
                                                 for t in TARGETS}
    versions = set()
    scored = 0
    for res, lab in zip(served, labels):
        if res is None or len(lab["items"]) < cfg.min_candidates:
            continue
        scored += 1
        versions.add(res["artifact_version"])
        pos = {str(i): j for j, i in enumerate(lab["items"])}
        orders = {"served": [pos[str(x["item_id"])] for x in res["items"]],
                  "logged": list(range(len(lab["items"]))), "click_ranking": lab["click_ranking"]}
        for t in TARGETS:
            vals = {o: ndcg_recall(orders[o], lab[t], cfg.k) for o in ORDERS}
            if vals["served"] is None:  # no positive: no order has one
                continue
            for o, v in vals.items():
                scores[t][f"{o}_ndcg"].append(v[0])
                scores[t][f"{o}_recall"].append(v[1])
            # paired over the same user-days: what the served ranking adds to the ranking stage's click order
            scores[t].setdefault("served_minus_click_ranking_ndcg", []).append(vals["served"][0] - vals["click_ranking"][0])
    summary = {t: {name: _ci(vals) for name, vals in s.items()} for t, s in scores.items()}
    report = {"artifact": str(artifact_dir), "artifact_version": sorted(versions), "algo": art.algo,
              "config": asdict(cfg), "ranking_stage": str(bundle), "counts": {**counts, "scored_user_days": scored},
              "errors": len(errors),
              "first_errors": errors[:5], "seconds": round(seconds, 1),
              "requests_per_s": round(len(bodies) / max(seconds, 1e-9), 1), "metrics": summary}
    out = Path(out)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", report_markdown(report))
    return report


def _ci(vals: list[float]) -> dict[str, float | int]:
    if not vals:
        return {"mean": float("nan"), "ci": float("nan"), "n": 0}
    s = mean_ci(np.asarray(vals))
    half = s["half_width"]
    return {"mean": float(s["mean"]), "ci": float("nan") if half is None else float(half), "n": len(vals)}


def report_markdown(report: dict[str, Any]) -> str:
    k = report["config"]["k"]
    lines = [f"# Shadow replay: {report['algo']} ({', '.join(report['artifact_version'])})", "",
             f"{report['counts']['user_days']:,} user-days of the log's last {report['config']['days']} day(s), "
             f"{report['counts']['exposures']:,} exposures as candidates, ranking stage {report['ranking_stage']}; "
             f"{report['errors']} failed requests; {report['seconds']} s ({report['requests_per_s']} requests/s). Scored: "
             f"the {report['counts']['scored_user_days']:,} user-days with at least {report['config']['min_candidates']} "
             "candidates, of them those with a positive (column user-days).", "",
             f"| target | order | NDCG@{k} | recall@{k} | user-days |", "|---|---|---|---|---|"]
    for t, s in report["metrics"].items():
        for o in ORDERS:
            n, r = s[f"{o}_ndcg"], s[f"{o}_recall"]
            lines.append(f"| {t} | {o} | {n['mean']:.4f} ± {n['ci']:.4f} | {r['mean']:.4f} ± {r['ci']:.4f} | {n['n']:,} |")
    lines += ["", f"Paired over the same user-days, served minus click ranking, NDCG@{k}: " + "; ".join(
        f"{t} {d['mean']:+.4f} ± {d['ci']:.4f}" for t, s in report["metrics"].items()
        if (d := s.get("served_minus_click_ranking_ndcg")) is not None) + "."]
    return "\n".join(lines) + "\n"

