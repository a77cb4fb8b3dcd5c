"""Shared fixtures. Real-data tests read ``../shared/data`` (override with RETENTIONRL_SHARED_DATA); in CI a
missing folder is a failure, elsewhere those tests are skipped."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from types import ModuleType
from pathlib import Path

import pandas as pd
import pytest
import torch

from retentionrl.data import load_dataset, sample_dir

REPO = Path(__file__).resolve().parents[1]

# Test workloads are small: one thread avoids OpenMP spin-waiting when the cores are shared.
torch.set_num_threads(1)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, registered in ``sys.modules`` (dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _shared() -> Path:
    return Path(os.environ.get("RETENTIONRL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared()
    if not (path / "kuairand-pure").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {path} (set RETENTIONRL_SHARED_DATA)")
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def kuairand_slice(shared_data):
    return load_dataset("kuairand-pure", shared_data / "kuairand-pure")


@pytest.fixture(scope="session")
def sample():
    return load_dataset("kuairand-pure")


@pytest.fixture()
def tiny_kuairand(tmp_path) -> Path:
    """A writable KuaiRand folder: the first 40 log rows of the shipped sample plus its feature files."""
    src = sample_dir()
    log = pd.read_csv(next(src.glob("log_standard_*.csv.gz")), nrows=40)
    log.to_csv(tmp_path / "log_standard_tiny.csv", index=False)
    for name in ("user_features_pure.csv.gz", "video_features_basic_pure.csv.gz"):
        shutil.copy(src / name, tmp_path / name)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory):
    """A small simulator built from the shipped sample (1,500 users, 1 epoch), saved and loaded back."""
    from retentionrl.simulator.build import BuildConfig, EnsembleConfig, build_simulator
    from retentionrl.simulator.bundle import Simulator
    from retentionrl.simulator.response import ResponseConfig

    cfg = BuildConfig(max_users=1500, response=ResponseConfig(dim=32, epochs=1, window=12),
                      ensemble=EnsembleConfig(members=0))  # tests/test_ensemble.py builds its own
    path = build_simulator(cfg, progress=False, log=lambda *_: None).save(tmp_path_factory.mktemp("sim") / "bundle")
    return Simulator.load(path)


def td3_config(steps: int, width: int, every: int, seed: int, n_users: int, eval_users: int, eval_seeds: list[int], **kw):
    """A small online TD3 run config: 2-session episodes, ``steps`` steps (a quarter of them warm-up), networks of
    ``width``, logs and checkpoints every ``every`` steps, evaluations at the middle and the end; ``kw``
    overrides fields."""
    from retentionrl.training.online import TrainConfig

    base = dict(algo="td3", seed=seed, n_users=n_users, total_steps=steps, warmup_steps=steps // 4, log_every=every,
                eval_every=steps // 2, checkpoint_every=every, env={"max_sessions": 2},
                eval={"n_users": eval_users, "n_episodes": eval_users, "seeds": eval_seeds},
                agent={"batch_size": width, "hidden": [width], "state_dim": width, "token_dim": max(8, width // 2)})
    base.update(kw)
    return TrainConfig(**base)


def random_rollout(sim, steps: int, rows: int, n_users: int = 8, seed: int = 0):
    """(first obs, batch): ``steps`` steps of ``n_users`` training users acting with uniform [-1, 1]^7 weights in
    the KuaiSim preset (2 sessions of 5 requests), stored in a replay buffer; ``rows`` rows sampled from it."""
    from retentionrl.training.buffer import ReplayBuffer

    env = sim.make_env("kuaisim", n_users=n_users, users="train", max_sessions=2)
    obs = first = env.reset(seed=seed)
    buf = ReplayBuffer(steps * n_users, obs, (7,), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        action = torch.rand(n_users, 7, generator=gen) * 2 - 1
        out = env.step(action)
        buf.add(obs, action, out)
        obs = out.obs
    return first, buf.sample(rows)


def reload_after_updates(build, cfg: dict, sim, obs, batch, updates: int = 2):
    """(agent, fresh): ``agent`` built with seed 0, updated ``updates`` times on ``batch`` and stepped once with
    exploration; ``fresh`` built with another seed (so everything must come from the state) and loaded from
    ``agent.state_dict()`` through ``torch.save``/``torch.load(weights_only=True)``."""
    import io

    agent = build(sim, dict(cfg), 0)
    for _ in range(updates):
        agent.update(batch)
    agent.act(obs, explore=True)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    fresh = build(sim, dict(cfg), 5)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return agent, fresh


@pytest.fixture(scope="module")
def synthetic_sim():
    """The synthetic simulator of the retention-path and offline-RL tests (64 users, 300 items, seed 0)."""
    from retentionrl.simulator.synthetic import make_synthetic_simulator

    return make_synthetic_simulator(n_users=64, n_items=300, seed=0)


@pytest.fixture(scope="module")
def synthetic_rollout(synthetic_sim):
    """(obs, batch): 12 steps of 8 training users acting with uniform [-1, 1]^7 weights (5-request sessions), 32
    replay rows with session ends and others."""
    first, batch = random_rollout(synthetic_sim, steps=12, rows=32)
    assert batch["session_end"].any() and (~batch["session_end"]).any()
    return first, batch
