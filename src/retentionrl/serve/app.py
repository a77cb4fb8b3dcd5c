"""The HTTP service (FastAPI): ``POST /v1/rank``, ``GET /healthz``, ``GET /v1/metadata``, ``POST /v1/admin/swap``
and the OpenAPI page (``/docs``).

Concurrent rank requests are micro-batched: the first request of a batch waits at most ``max_wait_ms`` for others
(up to ``max_batch``), and the batch goes through the policy in one forward pass on a single worker thread, so
the event loop keeps reading requests meanwhile. Swapping the artifact loads the new one on the side and then
replaces the ranker reference: a batch already taken finishes on the ranker it started with, later batches use the
new one, and no request fails or waits for the load.

Input errors are 4xx naming the field, never a 5xx: 422 for validation (missing field, wrong type, NaN or infinite
number, unknown behaviour or user feature, empty candidates, k above the candidates, malformed JSON), 413 for a
body, candidate list or history over the configured limits.
"""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from retentionrl.errors import RetentionRLError
from retentionrl.serve.artifact import load_artifact
from retentionrl.serve.ranker import Ranker
from retentionrl.serve.schema import RankRequest, RankResponse


@dataclass
class ServiceConfig:
    max_batch: int = 64  # requests per forward pass
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    max_candidates: int = 1000  # per request (413 above)
    max_history: int = 1000  # history items per request (413 above)
    max_body_bytes: int = 8 << 20  # request body (413 above)
    allow_swap: bool = True  # POST /v1/admin/swap


class SwapRequest(BaseModel):
    artifact_dir: str


def _text(s: str) -> str:
    """Text that encodes as UTF-8 whatever the request held (a lone surrogate in a key is escaped, not a 500)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return _text(".".join(parts)) or "body"


def _error(status: int, message: str) -> JSONResponse:
    message = _text(message)
    field, _, detail = message.partition(": ")
    return JSONResponse(status_code=status, content={"error": message, "errors": [{"field": field, "message": detail}]})


def _settle() -> None:
    """Move what is alive now (the artifact: modules, id maps, the manifest) out of the garbage collector's view.
    Validating a request makes thousands of short-lived objects; each collection would otherwise walk the whole
    artifact heap too — measured: 4.8 -> 1.9 ms to validate a 300-candidate body (benchmarks/serve_latency.py).
    After a swap the old artifact is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Batcher:
    """Collects rank requests into batches and runs each through the current ranker on one worker thread."""

    def __init__(self, ranker: Ranker, cfg: ServiceConfig) -> None:
        self.ranker, self.cfg = ranker, cfg
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank")
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0

    async def submit(self, req: RankRequest) -> RankResponse:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((req, fut))
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.cfg.max_wait_ms / 1000.0
            while len(batch) < self.cfg.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            ranker = self.ranker  # the batch keeps the ranker it started with (swap safety)
            try:
                results = await loop.run_in_executor(self.pool, ranker.rank, [r for r, _ in batch])
            except Exception as exc:  # a bug, not an input error: fail these requests, keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.requests += len(batch)
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)


def create_app(artifact_dir: str | Path, cfg: ServiceConfig | None = None) -> FastAPI:
    """The service for one artifact (loaded now: a bad artifact fails before the server starts)."""
    cfg = cfg or ServiceConfig()
    torch.set_num_threads(1)  # one forward at a time on the worker thread; the event loop has the other core
    batcher = Batcher(Ranker(load_artifact(artifact_dir)), cfg)
    _settle()
    started = time.time()

    async def lifespan(app: FastAPI):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()
        batcher.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="retentionrl policy service", version="1", lifespan=lifespan,
                  description="Ranks a ranking stage's candidates with a trained retention policy.")
    app.state.batcher = batcher

    def _invalid(exc: ValidationError | RequestValidationError) -> JSONResponse:
        errors = [{"field": "body" if e.get("type") == "json_invalid" else _where(e.get("loc", ())),
                   "message": _text(str(e.get("msg", "")))} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return JSONResponse(status_code=422, content={"error": f"{first['field']}: {first['message']}", "errors": errors})

    app.add_exception_handler(RequestValidationError, lambda request, exc: _invalid(exc))

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            return _error(413, f"body: {size} bytes is over the limit of {cfg.max_body_bytes}")
        return await call_next(request)

    # The body is validated from its bytes by pydantic-core's JSON parser (one pass, in Rust: about half the time
    # of json.loads + validation for 300 candidates); the schema is still on the OpenAPI page.
    @app.post("/v1/rank", response_model=RankResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}}}}})
    async def rank(request: Request) -> Any:
        try:
            req = RankRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return _invalid(exc)
        if req.n_candidates > cfg.max_candidates:
            field = "candidates" if req.candidates is not None else "candidate_columns.item_ids"
            return _error(413, f"{field}: {req.n_candidates} candidates is over the limit of {cfg.max_candidates}")
        if len(req.history) > cfg.max_history:
            return _error(413, f"history: {len(req.history)} items is over the limit of {cfg.max_history}")
        problem = batcher.ranker.check(req)
        if problem is not None:
            return _error(422, problem)
        return await batcher.submit(req)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default_openapi()
            schema = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update({**schema.pop("$defs", {}), "RankRequest": schema})
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "artifact_version": batcher.ranker.version, "uptime_s": round(time.time() - started, 1),
                "batches": batcher.batches, "requests": batcher.requests}

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        m = batcher.ranker.artifact.manifest
        inputs = m["inputs"]
        return {"artifact_version": m["version"], "algo": m["algo"], "label": m["label"], "seed": m["seed"],
                "action_mode": m["action_mode"], "created_at": m["created_at"], "behaviours": inputs["behaviours_order"],
                "history_window": inputs["window"], "n_items": len(inputs["item_ids"]),
                "user_features": {"categorical": list(inputs["user_categorical"]),
                                  "numeric": [s["name"] for s in inputs["user_numeric"]]},
                "simulator": m["simulator"], "evaluation": m["evaluation"], "limits": asdict(cfg)}

    @app.post("/v1/admin/swap")
    async def swap(body: SwapRequest) -> Any:
        if not cfg.allow_swap:
            return _error(403, "artifact_dir: artifact swap is disabled (--no-swap)")
        loop = asyncio.get_running_loop()
        try:  # load on a thread of its own: ranking goes on meanwhile
            new = await loop.run_in_executor(None, lambda: Ranker(load_artifact(body.artifact_dir)))
        except RetentionRLError as exc:
            return _error(422, f"artifact_dir: {exc}")
        old, batcher.ranker = batcher.ranker.version, new
        _settle()
        return {"previous_version": old, "artifact_version": new.version}

    return app


def serve(artifact_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, cfg: ServiceConfig | None = None,
          log=print) -> None:
    """Run the service with uvicorn until interrupted (the artifact is loaded, and refused, before it listens)."""
    app = create_app(artifact_dir, cfg)
    log(f"serving {app.state.batcher.ranker.version} from {artifact_dir} on http://{host}:{port} (OpenAPI page: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
