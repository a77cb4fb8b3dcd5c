"""A trained policy as a self-contained, versioned artifact: what ``retentionrl export`` writes and the service loads.

    ARTIFACT/
      manifest.json  format, version, algorithm, the run's config and resolved env, the agent's spec (sizes and
                     scales of its state features), the input spec (item ids, user feature values and numeric
                     scales, behaviours, history length: the bundle's ``inputs.json``), the simulator's
                     fingerprint, the run's evaluation summary, and the checksum
      weights.pt     tensors only: the agent's state dict and the item feature tables item-level policies read;
                     loaded with ``torch.load(weights_only=True)``

``checksum`` is a sha256 over ``weights.pt`` and the canonical JSON of the manifest without it; ``version`` is
``<algo>-<checksum[:12]>`` (the export time is left out), so two exports of the same run have the same version and
any change to the weights or the spec gives another. The directory is written to a temporary sibling and renamed into place (``atomic_dir``). Loading needs
no simulator bundle: :class:`ArtifactSimulator` stands in for the parts of a
:class:`~retentionrl.simulator.bundle.Simulator` the agents' builders read.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from retentionrl import __version__
from retentionrl.agents import Agent, make_agent
from retentionrl.config import from_dict, to_dict
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import AgentSpec
from retentionrl.simulator.env import EnvConfig
from retentionrl.training import load_trained
from retentionrl.training.run import RunDir
from retentionrl.utils.io import atomic_dir

FORMAT_VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "weights.pt"
#: fusion policies: their (1, 7) weights apply to the ranking stage's per-behaviour scores
FUSION = frozenset({"td3", "sac", "ddpg", "cem", "rlur", "gfn4retention", "bc", "resact", "td3bc", "iql", "cql",
                    "bcq", "il_cvae", "ranking"})
#: item-level policies: they score the given candidates by item id and features
ITEMS = frozenset({"din", "dqn", "cql_discrete"})
#: not servable yet, and why (what they read that a request does not carry)
NOT_SERVABLE = {
    "deepfm": "it looks users up in the simulator's per-user feature table by dense id",
    "rliv_ua": "it reads the user-author pair counts the env keeps (a pair store the request does not carry)",
    "sec": "it reads the simulator's response-model state of the user",
    "random": "it is not a trained policy",
    "gaussian": "it is a stochastic logging policy",
}


class ArtifactError(RetentionRLError):
    """A missing, damaged or unservable artifact, or a run that cannot be exported."""


class _Response:
    """What builders read from ``sim.response``: feature-table shapes, the item tables, the history window."""

    def __init__(self, n_user_cat: int, n_user_num: int, item_cat: Tensor, item_num: Tensor, window: int) -> None:
        self.user_cat = torch.zeros(0, n_user_cat, dtype=torch.long)  # no per-user rows: users come in requests
        self.user_num = torch.zeros(0, n_user_num)
        self.item_cat, self.item_num = item_cat, item_num
        self.cfg = SimpleNamespace(window=window)


class ArtifactSimulator:
    """The parts of a simulator the agents' ``build`` functions read (sizes, feature names, item tables), rebuilt
    from an artifact, so that a policy loads without its bundle. It simulates nothing."""

    def __init__(self, spec: AgentSpec, item_cards: list[int], item_cat: Tensor, item_num: Tensor) -> None:
        self.meta = {"user_cardinalities": list(spec.user_cards), "user_features": dict(spec.user_features),
                     "item_cardinalities": list(item_cards)}
        self.n_items, self.n_users, self.max_return_day = spec.n_items, 0, spec.max_return_day
        self.response = _Response(len(spec.user_cards), spec.n_user_num, item_cat, item_num, spec.window)


def _checksum(manifest: dict[str, Any], weights: Path) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "version", "created_at")}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode())
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_run(run_dir: str | Path, out: str | Path, simulator: str | Path | None = None) -> Path:
    """Write the artifact of a finished run (``summary.json`` and ``checkpoints/last.pt`` present) to ``out``.
    ``simulator``: the bundle (default: the one the run records; its fingerprint is checked). The bundle must
    have ``inputs.json`` (``retentionrl simulator inputs`` adds it to an older one)."""
    run = RunDir(run_dir)
    run.check_is_run()
    if not run.summary.is_file():
        raise ArtifactError(f"{run.path}: the run has not finished (no summary.json); finish it with "
                            "'retentionrl train --resume' before exporting")
    if not run.checkpoint.is_file():
        raise ArtifactError(f"{run.path}: no checkpoint ({run.checkpoint}); a policy without weights cannot be exported")
    summary = run.read_summary()
    sim = run.load_simulator(simulator)
    if sim.inputs is None:
        raise ArtifactError(f"{sim.path}: the bundle has no inputs.json (raw item ids and feature scales); add it with "
                            f"'retentionrl simulator inputs {sim.path} --data-dir DATA'")
    cfg, agent = load_trained(str(run.path), sim, compiled=False)  # weights only: no compiler needed
    if cfg.algo in NOT_SERVABLE:
        raise ArtifactError(f"{run.path}: '{cfg.algo}' cannot be served yet: {NOT_SERVABLE[cfg.algo]}")
    if cfg.algo not in FUSION | ITEMS:
        raise ArtifactError(f"{run.path}: unknown algorithm '{cfg.algo}' for serving")
    env = cfg.env_config()
    spec = AgentSpec.from_env(sim, env)
    raw_cfg, _ = run.read_config()
    manifest = {
        "format_version": FORMAT_VERSION, "retentionrl_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "algo": cfg.algo, "label": cfg.label or cfg.algo, "seed": cfg.seed,
        "action_mode": getattr(agent, "action_mode", "fusion"),
        "agent_config": cfg.agent,
        "run": {"path": str(run.path), "config": {k: v for k, v in raw_cfg.items() if k != "bundle"}},
        "env": to_dict(env), "spec": asdict(spec), "item_cardinalities": list(sim.meta["item_cardinalities"]),
        # users come with their features, not by id; categorical values from meta.json, their one source
        "inputs": {**{k: v for k, v in sim.inputs.items() if k not in ("user_ids", "user_categorical")},
                   "user_categorical": dict(sim.meta["user_features"]), "behaviours_order": list(BEHAVIOURS),
                   "window": spec.window},
        "simulator": {"fingerprint": sim.fingerprint, "dataset": sim.meta.get("dataset"),
                      "path": None if sim.path is None else str(Path(sim.path).resolve())},
        "evaluation": summary.get("eval"),
    }
    if len(manifest["inputs"]["item_ids"]) != spec.n_items:
        raise ArtifactError(f"{sim.path}/inputs.json: {len(manifest['inputs']['item_ids'])} item ids for {spec.n_items} items")
    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.save({"agent": agent.state_dict(), "item_cat": sim.response.item_cat.clone(),
                    "item_num": sim.response.item_num.clone()}, tmp / WEIGHTS)
        manifest["checksum"] = _checksum(manifest, tmp / WEIGHTS)
        manifest["version"] = f"{cfg.algo}-{manifest['checksum'][:12]}"
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


class Artifact:
    """A loaded artifact: ``manifest``, ``version``, the restored ``agent`` and its ``env`` config."""

    def __init__(self, path: Path, manifest: dict[str, Any], agent: Agent, env: EnvConfig, spec: AgentSpec) -> None:
        self.path, self.manifest, self.agent, self.env, self.spec = path, manifest, agent, env, spec
        self.version: str = manifest["version"]
        self.algo: str = manifest["algo"]
        self.fusion = manifest["action_mode"] == "fusion"


def load_artifact(path: str | Path) -> Artifact:
    """Read, verify (format, checksum) and restore an artifact; no simulator bundle is needed."""
    path = Path(path)
    for name in (MANIFEST, WEIGHTS):
        if not (path / name).is_file():
            raise ArtifactError(f"{path}: not an artifact ('{name}' is missing; make one with 'retentionrl export')")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}/{MANIFEST}: corrupt ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}/{MANIFEST}: unsupported artifact format (expected {FORMAT_VERSION})")
    if _checksum(manifest, path / WEIGHTS) != manifest.get("checksum"):
        raise ArtifactError(f"{path}: checksum mismatch (weights.pt or manifest.json changed after export)")
    try:
        weights = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        raise ArtifactError(f"{path}/{WEIGHTS}: cannot read ({type(exc).__name__})") from None
    spec = AgentSpec(**manifest["spec"])
    env = from_dict(EnvConfig, manifest["env"], f"{path}/{MANIFEST} env")
    stand_in = ArtifactSimulator(spec, manifest["item_cardinalities"], weights["item_cat"], weights["item_num"])
    agent = make_agent(manifest["algo"], stand_in, manifest["agent_config"], int(manifest["seed"]), env)
    agent.load_state_dict(weights["agent"])
    return Artifact(path, manifest, agent, env, spec)
