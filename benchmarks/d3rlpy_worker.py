"""d3rlpy's side of benchmarks/reference_check_d3rlpy.py: one cell, run by the d3rlpy venv's python.

    .venv-d3rlpy/bin/python benchmarks/d3rlpy_worker.py JOB.json

JOB.json (written by the benchmark): ``algo`` (td3bc | iql | cql | bcq), ``seed``, ``updates``, ``hidden`` (the
VectorEncoderFactory's hidden_units), ``config`` (the d3rlpy config's fields, e.g. ``actor_learning_rate``),
``dataset`` (an .npz with d3rlpy's MDPDataset arrays: observations (M, D) float32, actions (M, 7) float32,
rewards (M, 1) float32, terminals (M,), timeouts (M,)), ``policy`` (where save_policy writes the TorchScript
policy) and ``out`` (this worker's JSON result: updates, transitions, parameter counts, timings, versions).

Imports only numpy, torch and d3rlpy (not retentionrl), so that it runs in an environment of its own. It calls
``build_with_dataset`` and then ``update(dataset.sample_transition_batch(batch_size))`` exactly ``updates`` times
(what ``fit`` does, without its logger and its per-epoch model files).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

CONFIGS = {"td3bc": "TD3PlusBCConfig", "iql": "IQLConfig", "cql": "CQLConfig", "bcq": "BCQConfig"}
# Every encoder factory of each config: all get the same VectorEncoderFactory(hidden_units=hidden).
ENCODERS = {
    "td3bc": ("actor_encoder_factory", "critic_encoder_factory"),
    "iql": ("actor_encoder_factory", "critic_encoder_factory", "value_encoder_factory"),
    "cql": ("actor_encoder_factory", "critic_encoder_factory"),
    "bcq": ("actor_encoder_factory", "critic_encoder_factory", "imitator_encoder_factory"),
}
# Parameter groups reported, as d3rlpy's module names (the online networks; targets are copies).
GROUPS = {"actor": ("policy",), "critic": ("q_funcs",), "value": ("value_func",),
          "vae": ("vae_encoder", "vae_decoder")}


def _count(modules, names: tuple[str, ...]) -> int | None:
    mods = [getattr(modules, n) for n in names if hasattr(modules, n)]
    return sum(p.numel() for m in mods for p in m.parameters()) if mods else None


def main(job_path: str) -> None:
    import d3rlpy
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import MDPDataset
    from d3rlpy.models import VectorEncoderFactory

    job = json.loads(Path(job_path).read_text())
    algo_name = job["algo"]
    torch.set_num_threads(1)
    d3rlpy.seed(int(job["seed"]))  # random, numpy (the transition sampler) and torch
    data = np.load(job["dataset"])
    dataset = MDPDataset(observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
                         terminals=data["terminals"], timeouts=data["timeouts"],
                         action_space=ActionSpace.CONTINUOUS, action_size=int(data["actions"].shape[1]))
    encoder = VectorEncoderFactory(hidden_units=list(job["hidden"]))
    config = getattr(d3rlpy.algos, CONFIGS[algo_name])(**job["config"], **{k: encoder for k in ENCODERS[algo_name]})
    algo = config.create(device=False)  # CPU
    t0 = time.perf_counter()
    algo.build_with_dataset(dataset)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses: dict[str, float] = {}
    for _ in range(int(job["updates"])):
        info = algo.update(dataset.sample_transition_batch(config.batch_size))
        for k, v in info.items():
            losses[k] = float(v)
    t_train = time.perf_counter() - t0
    algo.save_policy(job["policy"])  # TorchScript (traced greedy policy: predict_best_action)
    modules = algo.impl.modules
    params = {g: n for g, names in GROUPS.items() if (n := _count(modules, names)) is not None}
    out = {"algo": algo_name, "seed": int(job["seed"]), "updates": int(algo.grad_step),
           "transitions": int(dataset.transition_count), "episodes": len(dataset.episodes),
           "batch_size": int(config.batch_size), "params": params, "train_seconds": round(t_train, 2),
           "build_seconds": round(t_build, 2), "last_losses": losses, "d3rlpy": d3rlpy.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    Path(job["out"]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: d3rlpy_worker.py JOB.json")
    main(sys.argv[1])
