"""Reference check: our offline TD3+BC / IQL / CQL / BCQ against d3rlpy 2.8.1's, on the same logged dataset, same
networks, updates, batch size and seeds; every frozen policy evaluated by our protocol.

    python benchmarks/reference_check_d3rlpy.py [--bundle bundles/kuairand-pure] [--algos td3bc iql cql bcq]
                                                [--seeds 0 1 2 3 4] [--workers 1] [--setup-only]

One cell = one algorithm x implementation (``ours`` | ``d3rlpy``) x seed; each writes
``RUNS/<algo>-<impl>/seed<k>/result.json`` and is skipped on the next call (a cell finished under other settings is
an error: use another ``--runs``). The report (mean ± 95% CI over seeds, Welch's t-test ours vs d3rlpy, parameter
counts) goes to docs/results/reference_check_d3rlpy.md, from whatever cells have finished. A smoke run of the whole
pipeline (one tiny cell per algorithm and implementation, ~40 s on one core)::

    python benchmarks/reference_check_d3rlpy.py --seeds 0 --updates 20 --n-log-users 8 --log-steps 12 \
        --batch-size 32 --eval-users 8 --eval-episodes 8 --runs /tmp/rc-smoke --out /tmp/rc-smoke.md

**The d3rlpy environment.** d3rlpy pins ``gymnasium==1.0.0`` and imports the old ``gym``, so it never enters the
package's dependencies or the main .venv: the first d3rlpy cell (or ``--setup-only``) creates ``.venv-d3rlpy/``
in the repository (cached: a marker file records the pins; delete the folder to rebuild it), with exactly::

    python -m venv .venv-d3rlpy                                   # the interpreter running this script
    .venv-d3rlpy/bin/python -m pip install torch==2.13.0          # first: the CPU wheel on disk
    .venv-d3rlpy/bin/python -m pip install d3rlpy==2.8.1 -c .venv-d3rlpy/constraints.txt
    .venv-d3rlpy/bin/python -m pip check
    .venv-d3rlpy/bin/python -c "import d3rlpy, gymnasium, torch"  # + asserts: 2.8.1, 1.0.0, 2.13.0

(constraints.txt pins ``torch==2.13.0`` and ``gymnasium==1.0.0``, so d3rlpy can never pull another torch.) Our
package is *not* installed there: it cannot live beside gymnasium 1.0.0 — its gymnasium adapter
(``simulator/gym.py``) imports ``gymnasium.vector.AutoresetMode`` (same-step autoreset), which gymnasium added in
1.1, so pyproject now asks for ``gymnasium>=1.1`` (it said ``>=1.0``; found by installing it here). Nothing on
d3rlpy's side needs it: the worker (benchmarks/d3rlpy_worker.py) imports only numpy, torch and d3rlpy, and
reads the dataset this process wrote. It trains, and saves the greedy policy with ``save_policy``
(TorchScript); this process (the main venv) loads it with ``torch.jit.load`` and evaluates it on the flat
observation with :func:`~retentionrl.evaluation.protocol.evaluate_policy`.

**The dataset (both sides learn from the same transitions).** Per cell, the logs of
configs/train/offline/bc-kuaisim.yaml's shared setup (the Gaussian behaviour around click-ranking, sigma 0.3,
``n_log_users`` 256 x ``log_steps`` 60 requests, seed = the cell's seed), generated exactly as ``train_offline``
does (:func:`cell_logs`; the test checks it). Ours train on them with ``train_offline``. For d3rlpy,
:func:`dataset_from_logs` maps them to MDPDataset arrays:

* observation = :func:`~retentionrl.spaces.flat_features` of the state (the vector our ``encoder: flat`` nets
  read); action = the logged (N, 7) fusion weights (unclipped, as ours see them); reward =
  ``retention_weight * retention_reward + immediate_weight * reward`` with the algorithm config's weights
  (10 and 0: days), i.e. :func:`~retentionrl.nets.actor_critic.mixed_reward`; terminals all 0 (``terminal:
  none``: a session end is a step, an episode end a time limit); a timeout closes every episode.
* Layout: our logs are step-major (row ``t * n_users + b``: all users at request t, then t + 1) and d3rlpy
  needs each episode's rows contiguous and in time order, its next observation being the next row. So the rows
  are regrouped per env row b and cut after each ``episode_end`` (and at the end of the logs, a logging cut).
* Next observations: d3rlpy forms s' from the next row of an episode and, for an episode that ends by timeout,
  drops the last row (``transition_count = length - 1``): our episode end's true successor (and that row's
  reward — a session end, 1/6 of all retention rewards) would be lost. Handled: each episode gets one extra row,
  the true ``next_obs`` of its last transition, with a zero action and reward and the timeout flag. d3rlpy then
  has exactly our N transitions (s, a, r, s'); the extra rows are never sampled as transitions (the test
  replays d3rlpy's transition rule on the arrays). Within an episode our ``next_obs`` of row t is the
  observation of row t + 1 (checked in the test), so nothing else changes.

**Matched (from the algorithm yaml and our config classes, one source for both sides: :func:`settings_for`).**
Networks: ours with ``agent.encoder: flat`` and ``hidden [128, 32]`` (our default); d3rlpy with
``VectorEncoderFactory(hidden_units=[128, 32])`` for every network. Both are MLPs obs(+action)→128→32 with ReLU
and a linear head (tanh for deterministic actors); the parameter counts are equal (recorded per cell and
checked against :func:`d3rlpy_param_formula`), except IQL's actor, see below. Updates: ``total_updates`` (1,500)
of batch 256, gamma 0.9, Polyak tau 0.005, two critics, and per algorithm:

* TD3+BC: alpha 2.5, lr 3e-4 / 3e-4, target noise 0.2 clipped at 0.5, actor and targets every 2nd update.
* IQL: expectile 0.7, beta (d3rlpy ``weight_temp``) 3, weights clipped at 100, lr 3e-4 for actor, critics and V
  (d3rlpy has one optimiser for Q and V, with the critic lr: same Adam per parameter).
* CQL: CQL(H) on SAC, conservative weight 5 (ours ``alpha_cql``; d3rlpy ``conservative_weight`` with the
  Lagrange multiplier frozen at ``initial_alpha`` 1 by ``alpha_learning_rate 0``, = ours ``lagrange: false``;
  its ``alpha_threshold`` 10 is then a constant shift without gradient), 10 actions per sampler (uniform,
  pi(s), pi(s')), log-sum-exp at temperature 1, lr actor 1e-4 / critic 3e-4 / temperature 1e-4, initial
  temperature 1, target entropy -7, no entropy in the backup.
* BCQ: phi (d3rlpy ``action_flexibility``) 0.05, 10 candidates (``n_action_samples``; d3rlpy's default is 100),
  lambda 0.75, KL weight (``beta``) 0.5, latent 14 clipped at ±0.5, posterior log-std in [-4, 15], lr 1e-3 x 3,
  actor every update.

**Differences that remain (library internals, not settings).**

* Sampling: ours epoch-wise shuffled minibatches (each row once per epoch); d3rlpy i.i.d. uniform with
  replacement (``np.random``). Seeds: ours seeds its networks with ``seed``; d3rlpy ``d3rlpy.seed(seed)`` — the
  same seed number, different streams (unlike the SB3 check, initial weights are not identical).
* TD3+BC: d3rlpy updates the actor at update 0, 2, 4, ... (``grad_step % 2 == 0``), ours after the 2nd, 4th, ...:
  the same count (750 of 1,500). Ours clamps the lambda denominator at 1e-8.
* IQL: **d3rlpy's actor is a Gaussian** (mean tanh(mu(s)), a state-independent log-std parameter squashed into
  [-5, 2]: 7 parameters more), trained by ``-mean(w * log N(a; tanh(mu), sigma))``; ours is deterministic,
  ``mean(w * |mu(s) - a|^2)``. With a state-independent sigma the minimiser of the mean is the same, but the
  gradient scale is 1/sigma^2 and sigma is learnt. Both act with tanh(mu(s)). d3rlpy computes the AWR weights
  after the V step (ours before it).
* CQL: d3rlpy's backup (``soft_q_backup False``) uses the target critics at the policy's *mean* action
  tanh(mu(s')); ours at a sample a' ~ pi(.|s'). d3rlpy's policy log-std is clamped to [-20, 2] (ours [-5, 2]);
  its temperature loss is ``-exp(log_alpha) * (log pi - 7)`` (ours ``-log_alpha * (log pi - 7)``: the same
  sign, gradients scaled by alpha) and it steps the temperature before using it in the actor loss (ours uses
  the value from the start of the update). tanh log-det: d3rlpy's softplus form, ours ``log(1 - tanh^2 + 1e-6)``.
* BCQ: **d3rlpy's VAE decoder is linear** (``VAEDecoder`` with its default ``with_squash=True`` returns the raw
  output; the perturbed action is clamped to [-1, 1]); ours is tanh-bounded. d3rlpy's greedy policy draws fresh
  latents at every call (``torch.randn``, which our evaluation seeds per eval seed, so it is reproducible);
  ours scores 10 latents drawn once at construction (``eval_latents``).
* Evaluation: d3rlpy's saved TorchScript policy is traced (``torch.jit.trace``) from ``predict_best_action``.

``train seconds`` is the update loop only (d3rlpy's includes its per-update Python transition sampling);
``eval seconds`` the frozen-policy evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from torch import Tensor

from retentionrl.bench import reference
from retentionrl.bench.reference import Cell, eval_fields
from retentionrl.agents.base import Agent, agent_spec
from retentionrl.bench.grid import run_parallel
from retentionrl.config import from_dict, load_config, merge
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.stats import mean_ci
from retentionrl.nets.actor_critic import mixed_reward, time_aware
from retentionrl.spaces import FlatLayout, Obs, flat_features, obs_from_batch
from retentionrl.utils.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "configs" / "train" / "offline"
WORKER = Path(__file__).resolve().parent / "d3rlpy_worker.py"
ALGOS = ("td3bc", "iql", "cql", "bcq")
IMPLS = ("ours", "d3rlpy")
NAMES = {"td3bc": "TD3+BC", "iql": "IQL", "cql": "CQL", "bcq": "BCQ"}
A = 7  # fusion weights
D3RLPY_VERSION = "2.8.1"
TORCH_PIN = "torch==2.13.0"
GYMNASIUM_PIN = "gymnasium==1.0.0"
VENV = REPO / ".venv-d3rlpy"
VENV_MARKER = ".retentionrl-ready"


# --- settings ------------------------------------------------------------------------------------------------
def bundle_path(bundle: str | Path) -> Path:
    return reference.bundle_path(bundle, REPO)


def bundle_key(bundle: str | Path) -> str:
    return reference.bundle_key(bundle, REPO)


def _agent_config_class(algo: str) -> type:
    from retentionrl.agents.bcq import BCQConfig
    from retentionrl.agents.cql import CQLConfig
    from retentionrl.agents.iql import IQLConfig
    from retentionrl.agents.td3bc import TD3BCConfig

    return {"td3bc": TD3BCConfig, "iql": IQLConfig, "cql": CQLConfig, "bcq": BCQConfig}[algo]


def d3rlpy_kwargs(algo: str, a: Any, batch_size: int) -> dict[str, Any]:
    """The d3rlpy config fields (besides the encoder factories) equal to our resolved agent config ``a``; refuses
    settings d3rlpy cannot express."""
    if a.terminal != "none":
        raise SystemExit(f"{algo}: terminal '{a.terminal}' is not mapped (the d3rlpy dataset has no terminals)")
    kw: dict[str, Any] = {"batch_size": int(batch_size), "gamma": a.gamma, "tau": a.tau, "n_critics": 2,
                          "actor_learning_rate": a.actor_lr, "critic_learning_rate": a.critic_lr}
    if algo == "td3bc":
        kw.update(alpha=a.alpha, target_smoothing_sigma=a.policy_noise, target_smoothing_clip=a.noise_clip,
                  update_actor_interval=a.policy_delay)
    elif algo == "iql":
        if a.value_lr != a.critic_lr:
            raise SystemExit("iql: d3rlpy trains V with the critics' optimiser; value_lr must equal critic_lr")
        kw.update(expectile=a.expectile, weight_temp=a.beta, max_weight=a.max_weight)
    elif algo == "cql":
        if a.cql_temperature != 1.0 or a.target_entropy != -float(A):
            raise SystemExit("cql: d3rlpy fixes the log-sum-exp temperature at 1 and the target entropy at -7")
        kw.update(temp_learning_rate=a.alpha_lr if a.autotune else 0.0, initial_temperature=a.alpha,
                  alpha_learning_rate=a.alpha_prime_lr if a.lagrange else 0.0, initial_alpha=1.0,
                  conservative_weight=a.alpha_cql, alpha_threshold=a.target_action_gap,
                  n_action_samples=a.n_action_samples, soft_q_backup=a.backup_entropy, max_q_backup=False)
    elif algo == "bcq":
        if a.latent_dim not in (None, 2 * A) or a.latent_clip != 0.5:
            raise SystemExit("bcq: d3rlpy fixes the latent at 2 x 7 dimensions clipped at ±0.5")
        kw.update(imitator_learning_rate=a.vae_lr, lam=a.lam, n_action_samples=a.n_candidates,
                  action_flexibility=a.phi, beta=a.kl_weight, rl_start_step=0, update_actor_interval=1)
    else:
        raise SystemExit(f"unknown algorithm '{algo}' (known: {', '.join(ALGOS)})")
    return kw


def settings_for(algo: str, bundle: str, **overrides: Any) -> dict[str, Any]:
    """Everything a cell depends on (JSON-able), from configs/train/offline/<algo>-kuaisim.yaml (its ``extends``
    resolved) with ``agent.encoder: flat``; ``overrides`` replace single entries (``n_log_users``, ``log_steps``,
    ``updates``, ``batch_size``, ``eval``, ``hidden``; the smoke run and the tests use tiny ones)."""
    raw = load_config(OFFLINE / f"{algo}-kuaisim.yaml")
    if raw.get("algo") != algo or raw.get("task") is not None or raw.get("loop") not in (None, "offline"):
        raise SystemExit(f"{algo}-kuaisim.yaml: expected the plain offline '{algo}' config (no task)")
    unknown = sorted(set(overrides) - {"n_log_users", "log_steps", "updates", "batch_size", "eval", "hidden"})
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    agent_raw = merge(raw.get("agent", {}), {"encoder": "flat"})
    if "hidden" in overrides:
        agent_raw["hidden"] = list(overrides["hidden"])
    if "batch_size" in overrides:
        agent_raw["batch_size"] = int(overrides["batch_size"])
    a = from_dict(_agent_config_class(algo), agent_raw, f"{algo}-kuaisim.yaml agent")
    batch = int(raw.get("batch_size") or a.batch_size)
    s = {
        "algo": algo, "bundle": str(bundle), "preset": raw.get("preset", "kuaisim"), "env": raw.get("env", {}),
        "behaviour": raw["behaviour"], "behaviour_agent": raw.get("behaviour_agent", {}),
        "n_log_users": int(overrides.get("n_log_users", raw["n_log_users"])),
        "log_steps": int(overrides.get("log_steps", raw["log_steps"])),
        "updates": int(overrides.get("updates", raw["total_updates"])), "batch_size": batch,
        "hidden": list(a.hidden), "eval": dict(overrides.get("eval", raw["eval"])), "agent": asdict(a),
        "d3rlpy": d3rlpy_kwargs(algo, a, batch), "d3rlpy_version": D3RLPY_VERSION,
    }
    return s


def offline_config(s: dict[str, Any], seed: int):
    """Our :class:`OfflineTrainConfig` of a cell (also the source of the logs and of the shared eval config)."""
    from retentionrl.training.offline import OfflineTrainConfig

    n = s["updates"]
    cfg = OfflineTrainConfig(
        algo=s["algo"], label=f"{s['algo']}-ours", seed=seed, preset=s["preset"], env=dict(s["env"]),
        behaviour=s["behaviour"], behaviour_agent=dict(s["behaviour_agent"]), n_log_users=s["n_log_users"],
        log_steps=s["log_steps"], total_updates=n, batch_size=s["batch_size"], log_every=math.gcd(n, 100),
        eval_every=n, checkpoint_every=n, eval=dict(s["eval"]), agent=dict(s["agent"]),
    )
    cfg.validate()
    return cfg


# --- the dataset -----------------------------------------------------------------------------------------------
@torch.no_grad()
def cell_logs(cfg, sim) -> dict[str, Tensor]:
    """The logs ``train_offline(cfg, sim, ...)`` trains on (same behaviour, seeds and call), without training."""
    from retentionrl.training.offline import generate_logs
    from retentionrl.training.run import build_agent

    env = cfg.env_config()
    behaviour = build_agent(cfg.behaviour, sim, cfg.behaviour_agent, cfg.seed + 1, env, "reference check",
                            key="behaviour_agent")
    return generate_logs(sim, behaviour, cfg.preset, cfg.n_log_users, cfg.log_steps, seed=cfg.seed, env=cfg.env,
                         explore=cfg.behaviour_explore)


def episode_segments(episode_end: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Row indices of every logged user-episode, in time order: for env row b the rows ``t * n_users + b`` of
    step-major logs, cut after each ``episode_end`` (N,) and at the end of the logs. Ordered by b, then time."""
    N = len(episode_end)
    if N % n_users:
        raise RetentionRLError(f"logs of {N} rows are not step-major over {n_users} users")
    out = []
    for b in range(n_users):
        rows = np.arange(b, N, n_users)
        cuts = np.flatnonzero(episode_end[rows]) + 1
        out += [seg for seg in np.split(rows, cuts) if len(seg)]
    return out


def d3rlpy_arrays(obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                  episode_end: np.ndarray, n_users: int) -> dict[str, np.ndarray]:
    """MDPDataset arrays from step-major transitions: obs, next_obs (N, D), action (N, A), reward (N,),
    episode_end (N,) bool. Each episode (:func:`episode_segments`, L rows) becomes L + 1 contiguous rows: its L
    observations, then the true successor of its last transition (zero action and reward, ``timeouts`` 1), so
    that d3rlpy's transitions (row i -> row i + 1, the last row of a timed-out episode not one) are exactly ours.

    Returns observations (M, D), actions (M, A), rewards (M, 1) float32, terminals, timeouts (M,) float32 and
    ``source`` (M,) int64: the log row of each array row, -1 for the appended successors (M = N + episodes)."""
    obs_l, act_l, rew_l, src_l = [], [], [], []
    for seg in episode_segments(np.asarray(episode_end, bool), n_users):
        obs_l += [obs[seg], next_obs[seg[-1:]]]
        act_l += [action[seg], np.zeros((1, action.shape[1]), action.dtype)]
        rew_l += [reward[seg], np.zeros(1, reward.dtype)]
        src_l += [seg, np.array([-1])]
    src = np.concatenate(src_l).astype(np.int64)
    timeouts = (src == -1).astype(np.float32)
    return {"observations": np.concatenate(obs_l).astype(np.float32),
            "actions": np.concatenate(act_l).astype(np.float32),
            "rewards": np.concatenate(rew_l).astype(np.float32)[:, None],
            "terminals": np.zeros(len(src), np.float32), "timeouts": timeouts, "source": src}


def dataset_from_logs(logs: dict[str, Tensor], layout: FlatLayout, n_users: int, retention_weight: float,
                      immediate_weight: float) -> dict[str, np.ndarray]:
    """:func:`d3rlpy_arrays` of logs from ``generate_logs`` (step-major, ``n_users`` parallel users): the flat
    observation of ``layout`` and the reward the agent trains on (``mixed_reward``)."""
    x = flat_features(obs_from_batch(logs), layout).numpy()
    x2 = flat_features(obs_from_batch(logs, "next_"), layout).numpy()
    r = mixed_reward(logs, retention_weight, immediate_weight).numpy()
    return d3rlpy_arrays(x, x2, logs["action"].float().numpy(), r, logs["episode_end"].numpy(), n_users)


# --- networks ---------------------------------------------------------------------------------------------------
def mlp_params(sizes: list[int]) -> int:
    """Weights and biases of Linear layers sizes[0] -> sizes[1] -> ..."""
    return sum(i * o + o for i, o in zip(sizes, sizes[1:]))


def d3rlpy_param_formula(algo: str, obs_dim: int, hidden: list[int], action_dim: int = A) -> dict[str, int]:
    """d3rlpy 2.8.1's parameter counts with ``VectorEncoderFactory(hidden_units=hidden)``: an encoder is
    Linear+ReLU per hidden width on obs (or obs+action / obs+latent for the "with action" ones), then heads:
    DeterministicPolicy Linear(h, A); NormalPolicy Linear(h, A) for mu and Linear(h, A) for log-std (CQL) or a
    (1, A) log-std parameter (IQL: ``use_std_parameter=True``); ContinuousMeanQFunction Linear(h, 1) x n_critics
    2; ValueFunction Linear(h, 1); DeterministicResidualPolicy encoder(obs+A) + Linear(h, A); VAEEncoder
    encoder(obs+A) + Linear(h, L) for mu and for log-std, VAEDecoder encoder(obs+L) + Linear(h, A), L = 2A."""
    D, h, L = obs_dim, list(hidden), 2 * action_dim

    def enc(d: int) -> int:
        return mlp_params([d, *h])

    def head(o: int) -> int:
        return h[-1] * o + o

    out = {"critic": 2 * (enc(D + action_dim) + head(1))}
    if algo == "td3bc":
        out["actor"] = enc(D) + head(action_dim)
    elif algo == "iql":
        out["actor"] = enc(D) + head(action_dim) + action_dim
        out["value"] = enc(D) + head(1)
    elif algo == "cql":
        out["actor"] = enc(D) + 2 * head(action_dim)
    elif algo == "bcq":
        out["actor"] = enc(D + action_dim) + head(action_dim)
        out["vae"] = enc(D + action_dim) + 2 * head(L) + enc(D + L) + head(action_dim)
    else:
        raise ValueError(f"unknown algorithm '{algo}'")
    return out


def our_params(agent) -> dict[str, int]:
    """Parameter counts of our agent's online networks, grouped as :func:`d3rlpy_param_formula`."""
    def n(*mods) -> int:
        return sum(p.numel() for m in mods for p in m.parameters())

    out = {"actor": n(agent.actor), "critic": n(agent.q1, agent.q2)}
    if hasattr(agent, "v"):
        out["value"] = n(agent.v)
    if hasattr(agent, "vae"):
        out["vae"] = n(agent.vae)
    return out


def expected_ours(algo: str, formula: dict[str, int]) -> dict[str, int]:
    """Our counts given d3rlpy's: equal, except IQL's actor (ours deterministic: no log-std parameter)."""
    return {k: v - (A if (algo, k) == ("iql", "actor") else 0) for k, v in formula.items()}


# --- one cell: ours -------------------------------------------------------------------------------------------
def _layout(cfg, sim) -> FlatLayout:
    return agent_spec(sim, cfg.env_config(), clock=time_aware(cfg.agent.get("terminal", "none"))).flat_layout()


def run_ours(s: dict[str, Any], seed: int, sim, run_dir: str | Path) -> dict[str, Any]:
    """Train ours with ``train_offline`` (flat encoder) and evaluate it; returns the cell's result (not saved)."""
    from retentionrl.training.offline import train_offline
    from retentionrl.training.run import build_agent

    cfg = offline_config(s, seed)
    probe = build_agent(cfg.algo, sim, cfg.agent, seed, cfg.env_config(), "reference check")
    if probe.cfg.encoder != "flat" or probe.actor.enc.layout != _layout(cfg, sim):
        raise RuntimeError("our networks do not read the dataset's flat observation")
    params = our_params(probe)
    want = expected_ours(s["algo"], d3rlpy_param_formula(s["algo"], _layout(cfg, sim).dim, s["hidden"]))
    if params != want:
        raise RuntimeError(f"{s['algo']}: our parameter counts {params} != d3rlpy's formula {want}")
    run_dir = Path(run_dir)
    summary = train_offline(cfg, sim, run_dir, resume=(run_dir / "config.yaml").is_file(), progress=False)
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    n = s["updates"]
    t_train = next(r["time"] for r in records if r["event"] == "train" and r["step"] == n)
    t_eval = next(r["time"] for r in records if r["event"] == "eval" and r["step"] == n)
    return {"eval": summary["eval"], "eval_per_seed": None, "train_seconds": t_train,
            "eval_seconds": round(t_eval - t_train, 2), "updates": summary["updates"],
            "transitions": summary["train_rows"], "params": params}


# --- one cell: d3rlpy -----------------------------------------------------------------------------------------
class TorchScriptPolicy(Agent):
    """d3rlpy's saved greedy policy (TorchScript, (B, obs_dim) -> (B, 7)) as one of our agents."""

    action_mode = "fusion"

    def __init__(self, module: torch.jit.ScriptModule, layout: FlatLayout) -> None:
        self.module, self.layout = module, layout

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        x = flat_features(obs, self.layout)  # (B, obs_dim)
        return self.module(x).reshape(len(x), -1).float()


def _constraints_text() -> str:
    return f"{TORCH_PIN}\n{GYMNASIUM_PIN}\n"


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The d3rlpy venv's python, creating the venv first if it has no marker (see the module docstring). Never
    touches the interpreter running this script (only ``-m venv`` from it)."""
    py = venv / "bin" / "python"
    marker = venv / VENV_MARKER
    want = {"torch": TORCH_PIN, "d3rlpy": D3RLPY_VERSION, "gymnasium": GYMNASIUM_PIN}
    if marker.is_file() and json.loads(marker.read_text()) == want and py.is_file():
        return py
    if venv.exists():
        shutil.rmtree(venv)  # half-built or built with other pins
    constraints = venv / "constraints.txt"
    version = "; ".join(f"assert {m}.__version__.split('+')[0] == '{v}', {m}.__version__" for m, v in
                        (("d3rlpy", D3RLPY_VERSION), ("gymnasium", GYMNASIUM_PIN.split("==")[1]),
                         ("torch", TORCH_PIN.split("==")[1])))
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "--quiet", TORCH_PIN],
        [str(py), "-m", "pip", "install", "--quiet", f"d3rlpy=={D3RLPY_VERSION}", "-c", str(constraints)],
        [str(py), "-m", "pip", "check"],
        [str(py), "-c", f"import d3rlpy, gymnasium, torch; {version}"],
    ]
    env = _child_env()
    t0 = time.perf_counter()
    for i, cmd in enumerate(steps):
        log(f"[d3rlpy venv] {' '.join(cmd)}")
        subprocess.run(cmd, check=True, env=env)
        if i == 0:
            constraints.write_text(_constraints_text())
    write_json_atomic(marker, want)
    log(f"[d3rlpy venv] ready in {time.perf_counter() - t0:.0f} s: {py}")
    return py


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_d3rlpy(s: dict[str, Any], seed: int, sim, cell_dir: str | Path, python: str | Path) -> dict[str, Any]:
    """Convert the cell's logs, train d3rlpy's algorithm in its venv (``python``), load the saved TorchScript policy
    here and evaluate it; returns the cell's result (not saved)."""
    from retentionrl.evaluation.protocol import evaluate_policy

    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    cfg = offline_config(s, seed)
    layout = _layout(cfg, sim)
    logs = cell_logs(cfg, sim)
    a = s["agent"]
    arrays = dataset_from_logs(logs, layout, cfg.n_log_users, a["retention_weight"], a["immediate_weight"])
    n_rows = len(logs["reward"])
    data = cell_dir / "dataset.npz"
    np.savez(data, **{k: v for k, v in arrays.items() if k != "source"})
    job = {"algo": s["algo"], "seed": seed, "updates": s["updates"], "hidden": s["hidden"], "config": s["d3rlpy"],
           "dataset": str(data), "policy": str(cell_dir / "policy.pt"), "out": str(cell_dir / "worker.json")}
    write_json_atomic(cell_dir / "job.json", job)
    with open(cell_dir / "worker.log", "w") as out:
        proc = subprocess.run([str(python), str(WORKER), str(cell_dir / "job.json")], stdout=out,
                              stderr=subprocess.STDOUT, env=_child_env())
    if proc.returncode:
        raise RuntimeError(f"d3rlpy worker failed ({proc.returncode}); see {cell_dir / 'worker.log'}")
    w = json.loads((cell_dir / "worker.json").read_text())
    if w["updates"] != s["updates"] or w["transitions"] != n_rows or w["batch_size"] != s["batch_size"]:
        raise RuntimeError(f"d3rlpy made {w['updates']} updates of {w['batch_size']} on {w['transitions']} "
                           f"transitions; expected {s['updates']} of {s['batch_size']} on {n_rows}")
    formula = d3rlpy_param_formula(s["algo"], layout.dim, s["hidden"])
    if w["params"] != formula:
        raise RuntimeError(f"{s['algo']}: d3rlpy's parameter counts {w['params']} != the formula {formula}")
    data.unlink()  # regenerated from the seed when needed
    module = torch.jit.load(str(cell_dir / "policy.pt"))
    module.eval()
    res = evaluate_policy(TorchScriptPolicy(module, layout), sim, cfg.eval_config())
    return {**eval_fields(res), "train_seconds": w["train_seconds"], "eval_seconds": round(res["wall_time"], 2),
            "updates": w["updates"], "transitions": w["transitions"], "params": w["params"],
            "worker": {k: w[k] for k in ("d3rlpy", "torch", "torch_threads", "episodes", "build_seconds",
                                         "last_losses")}}


# --- grid -------------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, python: str | None = None) -> dict[str, Any]:
    """Run one cell here (one torch thread) and save its result.json; returns the result."""
    from retentionrl.simulator.bundle import Simulator

    torch.set_num_threads(1)
    if cell.finished():
        return json.loads(cell.result_path.read_text())
    sim = Simulator.load(bundle_path(cell.settings["bundle"]))
    t0 = time.perf_counter()
    if cell.impl == "ours":
        res = run_ours(cell.settings, cell.seed, sim, cell.dir / "run")
    else:
        res = run_d3rlpy(cell.settings, cell.seed, sim, cell.dir, python or ensure_venv())
    out = {"algo": cell.algo, "impl": cell.impl, "seed": cell.seed, "settings": cell.settings,
           "torch_threads": torch.get_num_threads(), "cell_seconds": round(time.perf_counter() - t0, 1), **res}
    write_json_atomic(cell.result_path, out)
    return out


def _run_cell_star(args: tuple[Cell, str | None]) -> str:
    cell, python = args
    r = run_cell(cell, python)
    return (f"{cell.algo}-{cell.impl} seed {cell.seed}: return time {r['eval']['return_time']:.4f}, "
            f"train {r['train_seconds']:.1f} s, cell {r.get('cell_seconds', 0):.0f} s")


def run_grid(grid: list[Cell], workers: int = 1, venv: Path = VENV, log=print) -> None:
    todo = [c for c in grid if not c.finished()]
    log(f"[reference-check-d3rlpy] {len(grid)} cells, {len(grid) - len(todo)} already finished, {len(todo)} to run")
    python = str(ensure_venv(venv, log=log)) if any(c.impl == "d3rlpy" for c in todo) else None
    for msg in run_parallel(_run_cell_star, [(c, python) for c in todo], workers):
        log("  " + msg)


def _params(p: dict[str, int]) -> str:
    return " / ".join(f"{k} {p[k]:,}" for k in ("actor", "critic", "value", "vae") if k in p)


def report(grid: list[Cell]) -> str:
    """Markdown table of the finished cells: mean ± 95% CI over seeds per (algo, impl), Welch ours vs d3rlpy."""
    done: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in grid:
        if c.result_path.is_file():
            done.setdefault((c.algo, c.impl), []).append(json.loads(c.result_path.read_text()))
    s0 = grid[0].settings if grid else {}
    lines = [
        f"# Reference check: our offline TD3+BC / IQL / CQL / BCQ vs d3rlpy {s0.get('d3rlpy_version')}",
        "",
        (f"Simulator `{s0.get('bundle')}`, preset {s0.get('preset')}; logs of the `{s0.get('behaviour')}` behaviour "
         f"{s0.get('behaviour_agent')} over {s0.get('n_log_users')} users x {s0.get('log_steps')} requests "
         "(seed = the cell's seed; the same transitions on both sides, d3rlpy's MDPDataset regrouped per episode "
         "with each episode's true last successor); reward in days (retention_weight "
         f"{s0.get('agent', {}).get('retention_weight')}); {s0.get('updates')} updates of batch "
         f"{s0.get('batch_size')}; networks `{s0.get('hidden')}` MLPs on the flat observation (ours: `encoder: "
         "flat`; d3rlpy: `VectorEncoderFactory`). Frozen policies (d3rlpy's: its `save_policy` TorchScript) "
         f"evaluated with `evaluate_policy` on held-out users ({s0.get('eval')}). Generated by "
         "`benchmarks/reference_check_d3rlpy.py` (its docstring lists what is matched and what differs)."),
        "",
        "Return time in days (lower is better); mean ± 95% CI (Student t) over seeds. Train seconds: the update "
        "loop only.",
        "",
        f"| algo | impl | seeds | {reference.metric_header()} | train s | updates | parameters |",
        "|---" * (3 + len(reference.METRICS) + 3) + "|",
    ]
    verdicts = []
    for algo in dict.fromkeys(c.algo for c in grid):
        return_times = {}
        for impl in IMPLS:
            rs = sorted(done.get((algo, impl), []), key=lambda r: r["seed"])
            if not rs:
                lines.append(f"| {NAMES[algo]} | {impl} | 0 | " + "– | " * len(reference.METRICS) + "– | – | – |")
                continue
            return_times[impl] = [r["eval"]["return_time"] for r in rs]
            secs = mean_ci([r["train_seconds"] for r in rs])
            seeds = ",".join(str(r["seed"]) for r in rs)
            lines.append(f"| {NAMES[algo]} | {impl} | {seeds} | " + " | ".join(reference.metric_cells(rs))
                         + f" | {secs['mean']:.1f} | {rs[0]['updates']} | {_params(rs[0]['params'])} |")
        verdicts.append(reference.verdict(NAMES[algo], "d3rlpy", return_times.get("ours"), return_times.get("d3rlpy")))
    lines += ["", "Ours vs d3rlpy (Welch's t-test on the per-seed return time):", "", *verdicts, "",
              "IQL's d3rlpy actor has 7 parameters more than ours: its state-independent log-std (a Gaussian actor; "
              "ours is deterministic).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="bundles/kuairand-pure", help="relative to the repository, or absolute")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--updates", type=int, default=None, help="default: the yaml's total_updates (1500)")
    ap.add_argument("--n-log-users", type=int, default=None, help="default: the yaml's (256)")
    ap.add_argument("--log-steps", type=int, default=None, help="default: the yaml's (60)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the yaml's (256)")
    ap.add_argument("--eval-users", type=int, default=None, help="default: the yaml's eval.n_users (256)")
    ap.add_argument("--eval-episodes", type=int, default=None, help="default: the yaml's eval.n_episodes (512)")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=None, help="default: the yaml's eval.seeds")
    ap.add_argument("--runs", default=str(REPO / "runs" / "reference-check-d3rlpy"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "reference_check_d3rlpy.md"))
    ap.add_argument("--venv", default=str(VENV), help="the d3rlpy environment (created if missing)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--setup-only", action="store_true", help="create the d3rlpy venv and stop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.setup_only:
        ensure_venv(Path(args.venv))
        return
    over: dict[str, Any] = {k: v for k, v in (("updates", args.updates), ("n_log_users", args.n_log_users),
                                               ("log_steps", args.log_steps), ("batch_size", args.batch_size))
                            if v is not None}
    if args.eval_users or args.eval_episodes or args.eval_seeds:
        ev = dict(load_config(OFFLINE / "bc-kuaisim.yaml")["eval"])
        ev.update({k: v for k, v in (("n_users", args.eval_users), ("n_episodes", args.eval_episodes),
                                     ("seeds", args.eval_seeds)) if v})
        over["eval"] = ev
    bundle = bundle_key(bundle_path(args.bundle))
    grid = [Cell(a, i, s, settings_for(a, bundle, **over), args.runs)
            for a in args.algos for i in args.impls for s in args.seeds]
    try:
        run_grid(grid, args.workers, Path(args.venv))
    finally:
        md = report(grid)
        write_text_atomic(args.out, md)
        print(md)


if __name__ == "__main__":
    main()
