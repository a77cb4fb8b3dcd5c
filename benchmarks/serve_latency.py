"""The policy service under load (issue 15): latency and throughput at concurrency 1, 8 and 32 with 300 candidates
per request, a soak with zero 5xx and flat memory, and a property-based fuzz of request bodies.

    python benchmarks/serve_latency.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--seconds 15] [--soak 60]
                                       [--fuzz 2000] [--out docs/results/serve_latency.md]

Each artifact is served by ``retentionrl serve`` in a process of its own on 127.0.0.1 (default micro-batching:
64 requests, 2 ms), the load generator (httpx, asyncio) runs here: a closed loop of ``c`` workers, each sending its
next request when the last one returned, for ``--seconds`` after a 2-second warm-up. Requests are real-shaped: a
user of the artifact's vocabulary, 50 history items and 300 candidates with 7 scores each (random, seeded). Both
share this machine's two cores, so the numbers are those of a service with one core and a client on the other.

Two reference numbers beside them say where the time goes: the same load generator against a null service (FastAPI
returning a constant, ``--null-server``: the ceiling of client + HTTP on this machine), and the service's own
work in process, without HTTP (pydantic-core validation of the body, then one ``Ranker.rank`` per batch of 1 or 32).

Soak: concurrency 8 for ``--soak`` seconds; the server's RSS (``/proc/<pid>/status``) at the start and end, and
5xx / errors. Fuzz: ``--fuzz`` bodies from :func:`bodies` (hypothesis: well-formed, half-formed and garbage JSON,
raw bytes) sent one by one; the count by status code, and any 5xx is printed with its body.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.serve.artifact import load_artifact
from retentionrl.serve.ranker import Ranker
from retentionrl.serve.schema import RankRequest
from retentionrl.utils.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)


def realistic_body(inputs: dict, rng: random.Random, n_candidates: int = 300, n_history: int = 50) -> dict:
    ids = inputs["item_ids"]
    cat = inputs["user_categorical"]
    features = {c: rng.choice(v) for c, v in cat.items() if v}
    features.update({s["name"]: s["fill"] for s in inputs["user_numeric"]})
    return {"user": {"features": features},
            "history": [{"item_id": rng.choice(ids), "behaviours": {"click": float(rng.random() < 0.4)},
                         "watch_time": rng.random() * 30} for _ in range(n_history)],
            "candidates": [{"item_id": i, "scores": {b: rng.random() for b in BEHAVIOURS}}
                           for i in rng.sample(ids, n_candidates)],
            "k": 10, "context": {"session_index": rng.randrange(5), "step_in_session": rng.randrange(5),
                                 "days_since_last": float(rng.randrange(4))}}


def columnar(body: dict) -> dict:
    """The same request with its candidates as columns (``candidate_columns``)."""
    cands = body["candidates"]
    cols = {"item_ids": [c["item_id"] for c in cands],
            "scores": {b: [c["scores"].get(b, 0.0) for c in cands] for b in BEHAVIOURS}}
    return {**{k: v for k, v in body.items() if k != "candidates"}, "candidate_columns": cols}


def bodies(inputs: dict) -> st.SearchStrategy[bytes]:
    """Request bodies from valid to garbage: valid requests over the whole valid range, structured requests with
    wrong or extreme values anywhere, arbitrary JSON, and raw bytes."""
    ids = inputs["item_ids"][:50]
    names = [*inputs["user_categorical"], *(s["name"] for s in inputs["user_numeric"])]
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**30, max_value=10**30),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
    anyjson = st.recursive(scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=10)
    beh = st.sampled_from([*BEHAVIOURS, "klick", ""])
    item = st.one_of(st.sampled_from(ids), st.integers(), st.text(max_size=6), st.floats(), st.none())
    num = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.integers(), st.none(), st.text(max_size=3))
    candidate = st.fixed_dictionaries({"item_id": item, "scores": st.dictionaries(beh, num, max_size=8)},
                                      optional={"extra": anyjson})
    hist = st.fixed_dictionaries({"item_id": item}, optional={"behaviours": st.dictionaries(beh, num, max_size=8),
                                                              "watch_time": num})
    user = st.one_of(anyjson, st.fixed_dictionaries({"features": st.dictionaries(st.sampled_from([*names, "zzz"]), scalar,
                                                                                 max_size=6)}))
    context = st.one_of(anyjson, st.fixed_dictionaries({}, optional={"session_index": st.integers(),
                                                                     "step_in_session": st.integers(),
                                                                     "days_since_last": num}))
    body = st.fixed_dictionaries({}, optional={
        "user": user, "history": st.one_of(anyjson, st.lists(hist, max_size=6)),
        "candidates": st.one_of(anyjson, st.lists(candidate, min_size=1, max_size=8)), "k": st.one_of(st.integers(), scalar),
        "context": context})
    # well-formed requests with values from the whole valid range (unknown ids, extreme scores, empty history),
    # so that the ranking path, not only validation, meets the generator
    good_item = st.one_of(st.sampled_from(ids), st.integers(-10**12, 10**12), st.text(max_size=6))
    good_num = st.one_of(st.floats(0, 1), st.floats(-1e6, 1e6), st.just(0.0))
    good_candidates = st.lists(st.fixed_dictionaries({"item_id": good_item, "scores": st.dictionaries(
        st.sampled_from(BEHAVIOURS), good_num, max_size=7)}), min_size=1, max_size=12)
    valid = st.builds(
        lambda feats, hist, cands, k, ctx: {"user": {"features": feats}, "history": hist, "candidates": cands,
                                            "k": min(max(k, 1), len(cands)), "context": ctx},
        st.dictionaries(st.sampled_from(names), st.one_of(st.none(), st.integers(-10**6, 10**6), st.floats(-1e6, 1e6),
                                                          st.text(max_size=5)), max_size=6),
        st.lists(st.fixed_dictionaries({"item_id": good_item}, optional={
            "behaviours": st.dictionaries(st.sampled_from(BEHAVIOURS), st.sampled_from([0.0, 1.0]), max_size=7),
            "watch_time": st.floats(0, 1e7)}), max_size=30),
        good_candidates, st.integers(1, 12),
        st.fixed_dictionaries({}, optional={"session_index": st.integers(0, 10**6), "step_in_session": st.integers(0, 10**6),
                                            "days_since_last": st.floats(0, 36_500)}))
    return st.one_of(valid.map(lambda b: json.dumps(b).encode()), body.map(lambda b: json.dumps(b).encode()),
                     anyjson.map(lambda b: json.dumps(b).encode()), st.binary(max_size=64))


def fuzz(url: str, inputs: dict, n: int) -> dict:
    """Send ``n`` generated bodies; the count by status and the first 5xx bodies."""
    counts: dict[int, int] = {}
    server_errors: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(bodies(inputs))
        def one(body: bytes) -> None:
            r = client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            if r.status_code >= 500 and len(server_errors) < 5:
                server_errors.append(f"{r.status_code} {body[:300]!r}")

        one()
    return {"examples": sum(counts.values()), "by_status": dict(sorted(counts.items())), "server_errors": server_errors}


async def load(url: str, payloads: list[bytes], concurrency: int, seconds: float, warmup: float = 2.0) -> dict:
    lat: list[float] = []
    errors = server_errors = 0
    stop_at = [0.0]
    record = [False]

    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)) as c:
        async def worker(w: int) -> None:
            nonlocal errors, server_errors
            i = w
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/rank", content=payloads[i % len(payloads)],
                                     headers={"content-type": "application/json"})
                    ok = r.status_code == 200
                    server_errors += r.status_code >= 500
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                if record[0]:
                    if ok:
                        lat.append(dt)
                    else:
                        errors += 1
                i += concurrency

        stop_at[0] = time.perf_counter() + warmup + seconds
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        record[0] = True
        t_start = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t_start
    a = np.asarray(lat) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "server_errors": server_errors,
            "rps": len(lat) / elapsed, "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p95_ms": float(np.percentile(a, 95)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def null_server(port: int) -> None:
    """A service that reads the body and returns a constant: what the HTTP stack and the client cost alone."""
    app = FastAPI()

    @app.post("/v1/rank")
    async def rank(request: Request) -> Response:
        await request.body()
        return Response(b'{"items": []}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def in_process(path: str, payloads: list[bytes], reps: int = 5) -> dict:
    """ms per request of the service's own work: body validation, and ranking in batches of 1 and 32."""
    torch.set_num_threads(1)
    ranker = Ranker(load_artifact(path))
    gc.unfreeze()
    gc.collect()
    gc.freeze()  # as the service does after loading its artifact (serve/app.py: _settle)
    t0 = time.perf_counter()
    for _ in range(reps):
        reqs = [RankRequest.model_validate_json(b) for b in payloads[:32]]
    validate = (time.perf_counter() - t0) / (reps * 32) * 1000
    out = {"validate_ms": validate}
    for b in (1, 32):
        ranker.rank(reqs[:b])
        t0 = time.perf_counter()
        for _ in range(reps):
            ranker.rank(reqs[:b])
        out[f"rank_batch{b}_ms"] = (time.perf_counter() - t0) / (reps * b) * 1000
    return out


class ServerProcess:
    """``retentionrl serve ARTIFACT`` (or the null service) on a free port, in its own process (one torch thread)."""

    def __init__(self, artifact: str | None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = ([sys.executable, "-m", "retentionrl.cli", "serve", artifact, "--port", str(self.port)] if artifact else
               [sys.executable, __file__, "--null-server", str(self.port)])
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "ServerProcess":
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the service did not start in 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="*")
    p.add_argument("--null-server", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--soak", type=float, default=60.0)
    p.add_argument("--fuzz", type=int, default=2000)
    p.add_argument("--columnar", action="store_true", help="send the candidates as columns (candidate_columns)")
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "serve_latency.md"))
    args = p.parse_args()
    if args.null_server is not None:
        return null_server(args.null_server)
    if not args.artifacts:
        p.error("give at least one ARTIFACT_DIR")
    rows, soaks, fuzzes, inproc = [], [], [], []
    shape = columnar if args.columnar else (lambda b: b)
    payloads = [json.dumps(shape(realistic_body(load_artifact(args.artifacts[0]).manifest["inputs"], random.Random(0))))
                .encode() for _ in range(64)]
    print("[serve] null service (the load generator's and HTTP's ceiling)", flush=True)
    with ServerProcess(None) as srv:
        for c in LEVELS:
            r = asyncio.run(load(srv.url, payloads, c, args.seconds))
            rows.append({"algo": "null service", "version": "-", **r})
            print(f"  c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms", flush=True)
    for path in args.artifacts:
        art = load_artifact(path)
        inputs = art.manifest["inputs"]
        rng = random.Random(0)
        payloads = [json.dumps(shape(realistic_body(inputs, rng))).encode() for _ in range(64)]
        print(f"[serve] {art.algo} ({art.version}), {len(payloads[0]) / 1024:.0f} KiB per request", flush=True)
        inproc.append({"algo": art.algo, **in_process(path, payloads)})
        print(f"  in process: {inproc[-1]}", flush=True)
        with ServerProcess(path) as srv:
            for c in LEVELS:
                r = asyncio.run(load(srv.url, payloads, c, args.seconds))
                rows.append({"algo": art.algo, "version": art.version, **r})
                print(f"  c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} "
                      f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}", flush=True)
            if args.soak > 0:
                before = rss_mb(srv.proc.pid)
                r = asyncio.run(load(srv.url, payloads, 8, args.soak))
                after = rss_mb(srv.proc.pid)
                soaks.append({"algo": art.algo, "seconds": args.soak, "requests": r["requests"], "errors": r["errors"],
                              "server_errors": r["server_errors"], "rss_start_mb": before, "rss_end_mb": after})
                print(f"  soak {args.soak:.0f}s: {r['requests']} requests, {r['server_errors']} 5xx, "
                      f"RSS {before:.0f} -> {after:.0f} MiB", flush=True)
            if args.fuzz > 0:
                t0 = time.time()
                f = fuzz(srv.url, inputs, args.fuzz)
                fuzzes.append({"algo": art.algo, **f, "seconds": round(time.time() - t0, 1)})
                print(f"  fuzz: {f['examples']} bodies, by status {f['by_status']}, 5xx: {f['server_errors'] or 0}",
                      flush=True)
    lines = ["# Serving latency (benchmarks/serve_latency.py)", "",
             f"`python benchmarks/serve_latency.py {' '.join(args.artifacts)} --seconds {args.seconds:g} --soak "
             f"{args.soak:g} --fuzz {args.fuzz}{' --columnar' if args.columnar else ''}`; 300 candidates x 7 scores "
             f"({'as columns' if args.columnar else 'one object per candidate'}) and 50 history items per request; "
             "server and load generator on the same 2-core machine.", "",
             "| policy | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['algo']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} |" for r in rows]
    lines += ["", "The service's own work per request, in process (no HTTP): body validation, and ranking in a batch of 1 "
              "or 32 (ms).", "", "| policy | validate | rank, batch 1 | rank, batch 32 |", "|---|---|---|---|"]
    lines += [f"| {r['algo']} | {r['validate_ms']:.2f} | {r['rank_batch1_ms']:.2f} | {r['rank_batch32_ms']:.2f} |"
              for r in inproc]
    if soaks:
        lines += ["", "| soak | seconds | requests | 5xx | errors | RSS start MiB | RSS end MiB |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['algo']} | {s['seconds']:.0f} | {s['requests']} | {s['server_errors']} | {s['errors']} | "
                  f"{s['rss_start_mb']:.0f} | {s['rss_end_mb']:.0f} |" for s in soaks]
    if fuzzes:
        lines += ["", "| fuzz | bodies | by status | 5xx |", "|---|---|---|---|"]
        lines += [f"| {f['algo']} | {f['examples']} | {f['by_status']} | {len(f['server_errors'])} |" for f in fuzzes]
    out = Path(args.out)
    write_text_atomic(out, "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), {"load": rows, "in_process": inproc, "soak": soaks, "fuzz": fuzzes})
    print(f"written {out}")


if __name__ == "__main__":
    main()
