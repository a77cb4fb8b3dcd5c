"""Serving: export (refusals, checksum, no bundle needed), parity with the simulator, cold start, the HTTP service
against a real uvicorn server (every bad-request case, micro-batching, hot swap) and the shadow replay."""

from __future__ import annotations

import asyncio
import json
import math
import shutil

import httpx
import numpy as np
import pytest
import torch

from conftest import load_benchmark
from retentionrl.config import from_dict
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.nets.encoders import scale_numeric
from retentionrl.serve.app import ServiceConfig
from retentionrl.serve.artifact import ArtifactError, export_run, load_artifact
from retentionrl.serve.ranker import Ranker, request_of
from retentionrl.serve.replay import LocalServer, ReplayConfig, ndcg_recall, raw_user_features, replay
from retentionrl.simulator.build import BuildConfig, load_build_data
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.response import WATCH_SCALE
from retentionrl.training import train
from retentionrl.training.offline import OfflineTrainConfig, train_offline
from retentionrl.training.online import TrainConfig

SMALL = {"batch_size": 16, "hidden": [16], "state_dim": 16, "token_dim": 8}
METHODS = {
    "td3": SMALL,
    "rlur": {**SMALL, "group_feature": "user_active_degree", "groups": [["full_active"], ["high_active"]]},
    "gfn4retention": {**SMALL, "heads": 2},
    "dqn": {**SMALL, "dim": 16},
    "ranking": {},
}


def _train(sim, run, algo: str, steps: int = 24, **kw) -> None:
    cfg = TrainConfig(algo=algo, seed=0, n_users=8, total_steps=steps, warmup_steps=min(8, steps - 1), log_every=12, eval_every=steps,
                      checkpoint_every=12, env={"max_sessions": 2}, eval={"n_users": 8, "n_episodes": 8, "seeds": [1]},
                      agent=dict(METHODS[algo]))
    train(cfg, sim, run, progress=False, **kw)


@pytest.fixture(scope="module")
def artifacts(tiny_sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for algo in METHODS:
        _train(tiny_sim, root / algo, algo, steps=2 if algo == "ranking" else 24)
        out[algo] = export_run(root / algo, root / "artifacts" / algo)
    # DIN, item-level and trained from logs (the offline loop)
    din = OfflineTrainConfig(algo="din", seed=0, env={"max_sessions": 2}, behaviour="random", n_log_users=8, log_steps=6,
                             total_updates=20, batch_size=16, log_every=5, eval_every=20, checkpoint_every=10,
                             eval={"n_users": 8, "n_episodes": 8, "seeds": [1]}, agent={})
    train_offline(din, tiny_sim, root / "din", progress=False)
    out["din"] = export_run(root / "din", root / "artifacts" / "din")
    return out


@pytest.fixture(scope="module")
def data(tiny_sim):
    return load_build_data(from_dict(BuildConfig, tiny_sim.build_config, "build config"))


# --- export ------------------------------------------------------------------------------------------------------
def test_export_refuses_unfinished_runs_runs_without_checkpoint_and_bundles_without_inputs(tiny_sim, tmp_path):
    _train(tiny_sim, tmp_path / "part", "td3", stop_after=12)
    with pytest.raises(ArtifactError, match="has not finished"):
        export_run(tmp_path / "part", tmp_path / "a")
    _train(tiny_sim, tmp_path / "done", "td3")
    shutil.copytree(tmp_path / "done", tmp_path / "nockpt")
    (tmp_path / "nockpt" / "checkpoints" / "last.pt").unlink()
    with pytest.raises(ArtifactError, match="no checkpoint"):
        export_run(tmp_path / "nockpt", tmp_path / "a")
    bare = tiny_sim.path.parent / "bare"
    shutil.copytree(tiny_sim.path, bare, dirs_exist_ok=True)
    (bare / "inputs.json").unlink()
    with pytest.raises(ArtifactError, match="no inputs.json"):
        export_run(tmp_path / "done", tmp_path / "a", simulator=bare)
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_artifact_loads_without_the_bundle_and_checks_its_checksum(artifacts, tiny_sim, tmp_path, monkeypatch):
    copy = tmp_path / "td3"
    shutil.copytree(artifacts["td3"], copy)

    def no_bundle(*a, **k):
        raise AssertionError("loading an artifact must not read a simulator bundle")

    monkeypatch.setattr(Simulator, "load", no_bundle)
    art = load_artifact(copy)
    assert art.version == load_artifact(artifacts["td3"]).version and art.version.startswith("td3-")
    monkeypatch.undo()
    again = export_run(load_artifact(copy).manifest["run"]["path"], tmp_path / "again")  # same run, later
    assert load_artifact(again).version == art.version
    monkeypatch.setattr(Simulator, "load", no_bundle)
    m = json.loads((copy / "manifest.json").read_text())
    assert m["simulator"]["fingerprint"] == tiny_sim.fingerprint and "session_length" in m["evaluation"]
    m["agent_config"]["hidden"] = [32]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(copy)


# --- parity with the simulator -----------------------------------------------------------------------------------
def _request_of_row(obs, b: int, data, inputs: dict, cand: torch.Tensor, probs: torch.Tensor | None, k: int):
    """The request a ranking stage would send for row ``b`` of a simulator observation."""
    ids = inputs["item_ids"]
    hist = []
    for i, tok, pad in zip(obs.hist_items[b].tolist(), obs.hist_resp[b], obs.hist_pad[b].tolist()):
        if not pad:
            hist.append({"item_id": ids[i], "behaviours": {x: float(y) for x, y in zip(BEHAVIOURS, tok[:7].tolist()) if y},
                         "watch_time": float(math.expm1(float(tok[7]) * WATCH_SCALE))})
    cands = [{"item_id": ids[i], "scores": dict(zip(BEHAVIOURS, (probs[j].tolist() if probs is not None else [0.5] * 7)))}
             for j, i in enumerate(cand.tolist())]
    ctx = {"session_index": int(obs.session_index[b]), "step_in_session": int(obs.step_in_session[b]),
           "days_since_last": float(obs.days_since_last[b])}
    return request_of(raw_user_features(data, int(obs.user[b])), hist, cands, k, ctx)


@pytest.mark.parametrize("algo", ["td3", "rlur", "gfn4retention", "dqn", "din"])
def test_served_ranking_equals_the_simulator_ranking(artifacts, tiny_sim, data, algo):
    art = load_artifact(artifacts[algo])
    ranker = Ranker(art)
    env = tiny_sim.make_env("kuaisim", n_users=6, users="test", max_sessions=2, candidates=40,
                            action_mode=art.manifest["action_mode"])
    obs = env.reset(seed=3)
    checked = 0
    for step in range(4):  # fresh users, then histories and session steps the policy's own slates made
        cand = obs.candidates
        with torch.no_grad():
            action = art.agent.act(obs, explore=False)
            q = env.model.queries(env._state)[:, : len(BEHAVIOURS)]  # (B, 7, D)
            probs = torch.sigmoid(torch.einsum("bod,cd->bco", q, env.item_vecs[cand]) + env.item_bias[cand, :7])
        reqs = [_request_of_row(obs, b, data, art.manifest["inputs"], cand, probs[b], env.K) for b in range(env.B)]
        served_obs, _ = ranker.observe(reqs)
        assert torch.equal(served_obs.profile_cat, obs.profile_cat)
        assert torch.equal(served_obs.profile_num, obs.profile_num)
        assert torch.equal(served_obs.hist_items, obs.hist_items) and torch.equal(served_obs.hist_pad, obs.hist_pad)
        assert torch.allclose(served_obs.hist_resp, obs.hist_resp, atol=1e-5)
        out = env.step(action)
        served = ranker.rank(reqs)
        ids = art.manifest["inputs"]["item_ids"]
        for b in range(env.B):
            assert [x.item_id for x in served[b].items] == [ids[i] for i in out.slate[b].tolist()]
            if art.fusion:
                assert np.allclose(list(served[b].fusion_weights.values()), action[b].tolist(), atol=1e-5)
            checked += 1
        obs = out.obs
    assert checked == 24


# --- cold start --------------------------------------------------------------------------------------------------
def test_cold_start_values_items_and_candidates(artifacts):
    art = load_artifact(artifacts["dqn"])
    ranker = Ranker(art)
    inputs = art.manifest["inputs"]
    ids = inputs["item_ids"]
    known = [{"item_id": ids[3], "behaviours": {"click": 1.0}, "watch_time": 4.0}]
    base = request_of({"user_active_degree": "full_active"}, known, [{"item_id": ids[5], "scores": {"click": 0.2}}], 1)
    cold = request_of({"user_active_degree": "never-seen", "follow_user_num": None},
                      [{"item_id": "not-an-item", "behaviours": {"like": 1.0}}, *known],
                      [{"item_id": "new-1", "scores": {"click": 0.9}}, {"item_id": ids[5], "scores": {"click": 0.2}},
                       {"item_id": "new-2", "scores": {"click": 0.1}}], 3)
    ob, oc = ranker.observe([base])[0], ranker.observe([cold])[0]
    col = ranker.cat_columns.index("user_active_degree")
    assert ob.profile_cat[0, col] > 0 and oc.profile_cat[0, col] == 0  # an unseen value is the missing code
    j = ranker.num_columns.index("follow_user_num")
    assert float(oc.profile_num[0, j]) == pytest.approx(scale_numeric(None, ranker.num_scales[j]))  # the median
    assert torch.equal(ob.hist_items, oc.hist_items) and torch.equal(ob.hist_resp, oc.hist_resp)  # unknown item dropped
    res = ranker.rank([cold])[0]
    assert [x.item_id for x in res.items] == [ids[5], "new-1", "new-2"]  # known first, then the request's order
    assert res.items[0].score is not None and res.items[1].score is None
    assert res.cold_start == {"history_items_dropped": 1, "unseen_user_values": ["user_active_degree"],
                              "candidates_unknown": 2}


def test_fusion_policy_weights_the_given_scores_by_hand(artifacts):
    ranker = Ranker(load_artifact(artifacts["ranking"]))  # RankingModel: weights [1, 0, ..., 0]
    req = request_of({}, [], [{"item_id": "a", "scores": {"click": 0.2, "hate": 0.9}},
                              {"item_id": "b", "scores": {"click": 0.7}}, {"item_id": "c", "scores": {"click": 0.5}}], 3)
    res = ranker.rank([req])[0]
    assert [x.item_id for x in res.items] == ["b", "c", "a"]
    assert [x.score for x in res.items] == pytest.approx([0.7, 0.5, 0.2])
    assert res.fusion_weights == {b: float(b == "click") for b in BEHAVIOURS}


# --- the HTTP service on a real uvicorn server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(artifacts):
    cfg = ServiceConfig(max_candidates=50, max_history=20, max_body_bytes=200_000, max_wait_ms=20.0)
    with LocalServer(artifacts["td3"], cfg) as s:
        yield s


def _body(inputs: dict, n: int = 5, k: int = 3) -> dict:
    ids = inputs["item_ids"]
    return {"user": {"features": {"user_active_degree": "high_active", "follow_user_num": 12}},
            "history": [{"item_id": ids[0], "behaviours": {"click": 1}, "watch_time": 3.5}],
            "candidates": [{"item_id": ids[i], "scores": {"click": 0.1 * i, "long_view": 0.05}} for i in range(n)],
            "k": k, "context": {"session_index": 1, "step_in_session": 2, "days_since_last": 1.0}}


def test_service_endpoints_and_that_it_ranks_as_the_ranker(server, artifacts):
    art = load_artifact(artifacts["td3"])
    body = _body(art.manifest["inputs"])
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/healthz").json()["artifact_version"] == art.version
        meta = c.get("/v1/metadata").json()
        assert meta["algo"] == "td3" and meta["behaviours"] == list(BEHAVIOURS) and meta["limits"]["max_candidates"] == 50
        assert "/v1/rank" in c.get("/openapi.json").json()["paths"] and c.get("/docs").status_code == 200
        r = c.post("/v1/rank", json=body)
    assert r.status_code == 200
    want = Ranker(art).rank([request_of(**{k: body[k] for k in ("history", "candidates", "k", "context")},
                                        features=body["user"]["features"])])[0]
    got = r.json()
    assert [x["item_id"] for x in got["items"]] == [x.item_id for x in want.items]
    assert got["fusion_weights"] == pytest.approx(want.fusion_weights) and got["artifact_version"] == art.version


def _columns(body: dict) -> dict:
    """The body's candidates in the columnar form."""
    cands = body["candidates"]
    keys = sorted({b for c in cands for b in c["scores"]})
    return {"item_ids": [c["item_id"] for c in cands], "scores": {b: [c["scores"].get(b, 0.0) for c in cands] for b in keys}}


def _bad_cases(body: dict) -> list[tuple[str, object, int, str]]:
    def without(key):
        return {k: v for k, v in body.items() if k != key}

    def with_candidate(**over):
        return {**body, "candidates": [{**body["candidates"][0], **over}, *body["candidates"][1:]]}

    raw = json.dumps(body)
    return [
        ("missing field", without("k"), 422, "k: Field required"),
        ("missing candidates", without("candidates"), 422, "body: Value error, give the candidates either as 'candidates' or as 'candidate_columns'"),
        ("both candidate forms", {**body, "candidate_columns": _columns(body)}, 422, "body: Value error, give the candidates either"),
        ("columns of unequal length", {**without("candidates"), "candidate_columns": {
            **_columns(body), "scores": {"click": [0.1, 0.2]}}}, 422, "candidate_columns: Value error, scores.click has 2 values for 5 item_ids"),
        ("unknown behaviour column", {**without("candidates"), "candidate_columns": {
            **_columns(body), "scores": {"klick": [0.1] * 5}}}, 422, "candidate_columns.scores.klick: Extra inputs are not permitted"),
        ("too many candidate columns", {**without("candidates"), "candidate_columns": {
            "item_ids": list(range(60)), "scores": {}}, "k": 3}, 413, "candidate_columns.item_ids: 60 candidates is over the limit of 50"),
        ("wrong type", {**body, "k": "ten"}, 422, "k: Input should be a valid integer"),
        ("wrong type of a list", {**body, "history": {"item_id": 1}}, 422, "history: Input should be a valid array"),
        ("NaN score", raw.replace('"click": 0.1', '"click": NaN', 1), 422, "candidates.1.scores.click: Input should be a finite number"),
        ("infinite score", raw.replace('"click": 0.1', '"click": 1e999', 1), 422, "candidates.1.scores.click: Input should be a finite number"),
        ("infinite watch time", raw.replace('"watch_time": 3.5', '"watch_time": Infinity'), 422, "history.0.watch_time: Input should be a finite number"),
        ("unknown behaviour", with_candidate(scores={"klick": 0.3}), 422, "candidates.0.scores.klick: Extra inputs are not permitted"),
        ("unknown history behaviour", {**body, "history": [{"item_id": 1, "behaviours": {"share": 1}}]}, 422,
         "history.0.behaviours.share: Extra inputs are not permitted"),
        ("empty candidates", {**body, "candidates": []}, 422, "candidates: List should have at least 1 item"),
        ("k larger than the candidates", {**body, "k": 6}, 422, "k: Value error, k (6) is larger than the number of candidates (5)"),
        ("k zero", {**body, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ("unknown field", {**body, "usr": {}}, 422, "usr: Extra inputs are not permitted"),
        ("unknown user feature", {**body, "user": {"features": {"age": 3}}}, 422, "user.features.age: unknown user feature"),
        ("text for a numeric feature", {**body, "user": {"features": {"follow_user_num": "many"}}}, 422,
         "user.features.follow_user_num: a number is expected"),
        ("negative step", {**body, "context": {"step_in_session": -1}}, 422, "context.step_in_session: Input should be greater than or equal to 0"),
        ("malformed JSON", raw[:-3], 422, "body: Invalid JSON"),
        ("not an object", "[1, 2]", 422, "body: Input should be an object"),
        ("too many candidates", {**body, "candidates": body["candidates"] * 11}, 413,
         "candidates: 55 candidates is over the limit of 50"),
        ("too many history items", {**body, "history": body["history"] * 21}, 413, "history: 21 items is over the limit of 20"),
        ("body too large", {**body, "user": {"features": {"user_active_degree": "x" * 300_000}}}, 413, "body:"),
    ]


def test_columnar_candidates_rank_as_the_per_candidate_form(server, artifacts):
    body = _body(load_artifact(artifacts["td3"]).manifest["inputs"], n=12, k=6)
    cols = {k: v for k, v in body.items() if k != "candidates"} | {"candidate_columns": _columns(body)}
    with httpx.Client(base_url=server.url) as c:
        a, b = c.post("/v1/rank", json=body).json(), c.post("/v1/rank", json=cols).json()
    assert a == b and len(a["items"]) == 6


def test_every_bad_request_gets_its_4xx_naming_the_field(server, artifacts):
    body = _body(load_artifact(artifacts["td3"]).manifest["inputs"])
    with httpx.Client(base_url=server.url) as c:
        for name, bad, status, message in _bad_cases(body):
            content = bad if isinstance(bad, str) else json.dumps(bad)
            r = c.post("/v1/rank", content=content, headers={"content-type": "application/json"})
            assert (r.status_code, name) == (status, name), r.text
            assert r.json()["error"].startswith(message), (name, r.json()["error"])


async def _concurrent(url: str, body: dict, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        return await asyncio.gather(*(c.post("/v1/rank", json=body) for _ in range(n)))


def test_concurrent_requests_are_micro_batched(server, artifacts):
    body = _body(load_artifact(artifacts["td3"]).manifest["inputs"])
    before = httpx.get(f"{server.url}/healthz").json()
    rs = asyncio.run(_concurrent(server.url, body, 32))
    after = httpx.get(f"{server.url}/healthz").json()
    assert all(r.status_code == 200 for r in rs)
    assert len({json.dumps(r.json()) for r in rs}) == 1  # a row of a batch is ranked as alone
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32  # fewer forward passes than requests


def test_hot_swap_drops_and_fails_nothing_in_flight(artifacts):
    inputs = load_artifact(artifacts["td3"]).manifest["inputs"]
    new = load_artifact(artifacts["gfn4retention"]).version
    body = _body(inputs)

    async def run(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async def stream():
                return [await c.post("/v1/rank", json=body) for _ in range(40)]
            streams = [asyncio.create_task(stream()) for _ in range(4)]
            await asyncio.sleep(0.05)
            swap = await c.post("/v1/admin/swap", json={"artifact_dir": str(artifacts["gfn4retention"])})
            bad = await c.post("/v1/admin/swap", json={"artifact_dir": "/nonexistent"})
            done = [r for s in await asyncio.gather(*streams) for r in s]
            return swap, bad, done, await c.get("/healthz")

    with LocalServer(artifacts["td3"], ServiceConfig(max_wait_ms=1.0)) as s:
        swap, bad, done, health = asyncio.run(run(s.url))
    assert swap.status_code == 200 and swap.json()["artifact_version"] == new
    assert bad.status_code == 422 and bad.json()["error"].startswith("artifact_dir:")
    assert all(r.status_code == 200 for r in done) and len(done) == 160
    versions = [r.json()["artifact_version"] for r in done]
    assert versions[-1] == new and health.json()["artifact_version"] == new
    assert versions[0] != new  # requests before the swap were served by the old artifact


# --- replay ------------------------------------------------------------------------------------------------------
def test_ndcg_and_recall_by_hand():
    # relevances of candidates 0..3: [1, 0, 1, 0]; ranking [1, 2, 0, 3]: gains 0, 1, 1, 0
    ndcg, recall = ndcg_recall([1, 2, 0, 3], [1, 0, 1, 0], k=2)
    assert ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert recall == pytest.approx(0.5)
    assert ndcg_recall([0, 1], [0, 0], k=2) is None


def test_replay_of_the_click_ranking_artifact_equals_the_click_ranking_baseline(artifacts, tiny_sim, tmp_path):
    cfg = ReplayConfig(max_user_days=600, k=5)  # of them, the 1,500 users of tiny_sim
    rep = replay(artifacts["ranking"], cfg, tmp_path / "rep", simulator=tiny_sim.path, log=lambda *_: None)
    assert rep["errors"] == 0 and rep["counts"]["user_days"] > 100
    for t in ("click", "long_view"):
        m = rep["metrics"][t]
        assert m["served_ndcg"]["n"] > 20
        assert m["served_ndcg"]["mean"] == pytest.approx(m["click_ranking_ndcg"]["mean"], abs=1e-12)
        assert m["served_recall"]["mean"] == pytest.approx(m["click_ranking_recall"]["mean"], abs=1e-12)
        assert m["served_minus_click_ranking_ndcg"] == {"mean": 0.0, "ci": 0.0, "n": m["served_ndcg"]["n"]}
        assert m["logged_ndcg"]["mean"] != m["served_ndcg"]["mean"]  # the log's order is another ranking
    assert (tmp_path / "rep" / "report.md").read_text().count("| click |") == 3


def test_fuzzed_bodies_never_get_a_5xx(server, artifacts):
    """Hypothesis bodies (benchmarks/serve_latency.py: structured with wrong or extreme values, arbitrary JSON, raw
    bytes) against the real server: every answer is a 2xx or 4xx."""
    bench = load_benchmark("serve_latency")
    res = bench.fuzz(server.url, load_artifact(artifacts["td3"]).manifest["inputs"], 300)
    assert res["examples"] == 300 and not res["server_errors"], res
    assert set(res["by_status"]) <= {200, 400, 413, 422}
    assert res["by_status"].get(422, 0) > 50 and res["by_status"].get(200, 0) > 50  # both paths are exercised


def test_cli_export_serve_and_replay_refusals_are_one_line_exit_2(tiny_sim, tmp_path, capsys):
    from retentionrl.cli import main

    _train(tiny_sim, tmp_path / "part", "td3", stop_after=12)
    assert main(["export", str(tmp_path / "part"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has not finished" in err and not (tmp_path / "a").exists()
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "not an artifact" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nothing"), "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err


def test_simulator_inputs_restores_the_file_and_refuses_other_data(tiny_sim, tmp_path):
    from retentionrl.simulator.build import add_inputs
    from retentionrl.simulator.bundle import BundleError

    old = tmp_path / "old"
    shutil.copytree(tiny_sim.path, old)
    (old / "inputs.json").unlink()
    add_inputs(old, None)
    assert json.loads((old / "inputs.json").read_text()) == tiny_sim.inputs
    assert Simulator.load(old).fingerprint == tiny_sim.fingerprint
    cfg = (old / "config.yaml").read_text().replace("max_users: 1500", "max_users: 1400")
    assert cfg != (old / "config.yaml").read_text()
    (old / "config.yaml").write_text(cfg)
    with pytest.raises(BundleError, match="does not reproduce the bundle's user codes"):
        add_inputs(old, None)


def test_a_checkpoint_that_does_not_fit_the_agent_is_a_clear_refusal(tiny_sim, tmp_path):
    from retentionrl.errors import RetentionRLError
    from retentionrl.training.checkpoint import load_checkpoint, save_checkpoint

    _train(tiny_sim, tmp_path / "run", "td3")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    actor = state["agent"]["actor"]
    name = next(k for k, v in actor.items() if v.dim() == 2)
    actor[name] = torch.zeros(actor[name].shape[0] + 1, actor[name].shape[1])  # an older network's shape
    save_checkpoint(ckpt, state)
    with pytest.raises(RetentionRLError, match=r"last.pt: the checkpoint does not fit the agent this config builds"):
        export_run(tmp_path / "run", tmp_path / "a")


def test_a_compiled_run_exports_on_a_machine_without_a_cpp_compiler(artifacts, tiny_sim, tmp_path, monkeypatch):
    """Export needs the weights, not compiled encoders: a ``compile: true`` run exports where no C++ compiler is
    (evaluation, which compiles to reproduce the run's numbers, is refused there: tests/test_bad_input.py)."""
    from pathlib import Path

    import yaml

    run = tmp_path / "td3c"
    shutil.copytree(Path(load_artifact(artifacts["td3"]).manifest["run"]["path"]), run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "compile": True}))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    art = load_artifact(export_run(run, tmp_path / "artifact"))
    assert art.manifest["run"]["config"]["compile"] is True
