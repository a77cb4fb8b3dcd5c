"""Build a simulator bundle from logs: response model, learned leave and return models, per-user return terms."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retentionrl import __version__
from retentionrl.config import from_dict, to_dict
from retentionrl.data import load_dataset, sessionize
from retentionrl.data.schema import BEHAVIOURS, Interactions
from retentionrl.data.sessions import Sessions
from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import FeatureTensors, numeric_scales
from retentionrl.simulator.bundle import FORMAT_VERSION, INPUTS, LEARNED_UNIT, BundleError, Simulator
from retentionrl.utils.io import write_text_atomic
from retentionrl.simulator.leave import fit_learned_leave, leave_features
from retentionrl.simulator.response import ResponseConfig, ResponseModel, train_response_model
from retentionrl.simulator.returns import fit_learned_return, fit_personal_term, session_features


@dataclass
class EnsembleConfig:
    """Bootstrap members of the response and learned return models, used only to measure where the simulator
    extrapolates (the env simulates with the main models). Each member refits both on a resample of *users*
    drawn with replacement (its own seed); its return model is fitted on its own response model's states."""

    members: int = 5  # 0: no ensemble (fast builds)
    epochs: int = 2  # response-model epochs per member (capped at the main model's): the build-time budget
    return_epochs: int = 30


@dataclass
class BuildConfig:
    dataset: str = "kuairand-pure"
    data_dir: str | None = None  # None: the shipped sample
    seed: int = 0
    max_return_day: int = 10
    test_user_fraction: float = 0.2  # users held out for the return model's likelihood and for evaluation
    personal_prior: float = 2.0  # Beta-prior pseudo-returns for the per-user geometric term
    max_users: int | None = None  # keep a random subset of users (quick builds)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def reward_weights(data: Interactions) -> list[float]:
    """KuaiSim's immediate-reward weights: #positives / #negatives of each behaviour, negative for hate.

    A behaviour the source does not record, or one that is constant in the log (MovieLens: every rating is a
    click), carries no preference signal and gets weight 0 (the ratio would be 0 or unbounded).
    """
    w = []
    for b in BEHAVIOURS:
        pos = float(data.log[b].sum())
        neg = len(data.log) - pos
        if b not in data.behaviours or pos == 0 or neg == 0:
            w.append(0.0)
            continue
        w.append(-pos / neg if b == "hate" else pos / neg)
    return w


def _initial_histories(data: Interactions, H: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, H) items, (U, H, 8) response tokens, (U, H) pad: each user's last H logged exposures, oldest first."""
    log = data.log
    user = log["user_id"].to_numpy()
    pos_from_end = (log.groupby("user_id").cumcount(ascending=False)).to_numpy()  # 0 = the user's last row
    keep = pos_from_end < H
    slot = H - 1 - pos_from_end[keep]
    items = torch.zeros(data.n_users, H, dtype=torch.long)
    resp = torch.zeros(data.n_users, H, len(BEHAVIOURS) + 1)
    pad = torch.ones(data.n_users, H, dtype=torch.bool)
    u = torch.tensor(user[keep])
    s = torch.tensor(slot)
    items[u, s] = torch.tensor(log["item_id"].to_numpy()[keep])
    tok = ResponseModel.token_features(
        torch.tensor(log[list(BEHAVIOURS)].to_numpy(np.float32)[keep]),
        torch.tensor(log["watch_time"].to_numpy(np.float32)[keep]),
    )
    resp[u, s] = tok
    pad[u, s] = False
    return items, resp, pad


def _item_table(data: Interactions, column: str) -> torch.Tensor:
    out = np.full(data.n_items, -1, dtype=np.int64)
    out[data.log["item_id"].to_numpy()] = data.log[column].to_numpy()
    return torch.tensor(out)


def _session_rows(data: Interactions, sessions: Sessions) -> tuple[np.ndarray, np.ndarray]:
    """Per log row: 1-based rank within its session, and whether it is the session's last row."""
    sid = pd.Series(sessions.session_of)
    rank = sid.groupby(sid).cumcount().to_numpy() + 1
    last = rank == sessions.table["length"].to_numpy()[sessions.session_of]
    return rank, last


def input_spec(data: Interactions) -> dict:
    """The bundle's ``inputs.json``: what raw log values stand for in the simulator. ``item_ids`` / ``user_ids``:
    the source's id of each dense item / user id; ``user_numeric``: per column the map to its standardised feature
    (:func:`~retentionrl.nets.encoders.numeric_scales`); ``behaviours``: those the source records. The categorical
    values are ``meta.json``'s ``user_features`` (not repeated here)."""
    return {"dataset": data.name, "item_ids": np.asarray(data.item_ids).tolist(),
            "user_ids": np.asarray(data.user_ids).tolist(),
            "user_numeric": numeric_scales(data.user_features), "behaviours": list(data.behaviours)}


def load_build_data(cfg: BuildConfig) -> Interactions:
    """The data a build reads: the dataset, restricted to ``max_users`` random users (seeded) when set."""
    data = load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.max_users is not None and cfg.max_users < data.n_users:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(data.n_users, cfg.max_users, replace=False))
        data = data.subset_users(keep)
    return data


def add_inputs(bundle: str | Path, data_dir: str | Path | None) -> Path:
    """Write ``inputs.json`` into a bundle built before it existed, from the data it was built from (``data_dir``;
    None: the build config's), after checking that the data reproduces the bundle's feature tables exactly (the
    same users, items and encodings). The fingerprint does not change. Returns the file's path."""
    bundle = Path(bundle)
    sim = Simulator.load(bundle)
    cfg = from_dict(BuildConfig, sim.build_config, f"{bundle}/config.yaml")
    if data_dir is not None:
        cfg = replace(cfg, data_dir=str(data_dir))
    data = load_build_data(cfg)
    users, items = FeatureTensors.from_table(data.user_features), FeatureTensors.from_table(data.item_features)
    for what, got, want in (("user codes", users.cat, sim.response.user_cat), ("user numerics", users.num, sim.response.user_num),
                            ("item codes", items.cat, sim.response.item_cat), ("item numerics", items.num, sim.response.item_num)):
        if got.shape != want.shape or not torch.equal(got, want):
            raise BundleError(f"{bundle}: the data in {cfg.data_dir or 'the shipped sample'} does not reproduce the "
                              f"bundle's {what} ({tuple(got.shape)} vs {tuple(want.shape)}): not the data it was built from")
    write_text_atomic(bundle / INPUTS, json.dumps(input_spec(data)) + "\n")
    return bundle / INPUTS


def build_simulator(cfg: BuildConfig, progress: bool = True, log=print) -> Simulator:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    data = load_build_data(cfg)
    if data.log["day"].nunique() < 2:
        raise RetentionRLError(f"{data.name}: the log covers one day; a time split needs at least two")
    sessions = sessionize(data, "day")
    log(f"[build] {data.name}: {data.n_users:,} users, {data.n_items:,} items, {data.n_interactions:,} "
        f"exposures, {len(sessions):,} sessions")

    fit = train_response_model(data, cfg.response, seed=cfg.seed, progress=progress)
    auc_line = ", ".join(f"{b} {v['model']:.3f} (pop {v['popularity']:.3f})" for b, v in fit.auc.items() if v["model"] is not None)
    log(f"[build] response model held-out-day AUC: {auc_line}")

    # Leave model: a per-exposure hazard, one example per logged exposure (label = it was the last of its
    # session); the env evaluates it on each shown item. Time split.
    rank, last = _session_rows(data, sessions)
    resp = torch.tensor(data.log[list(BEHAVIOURS)].to_numpy(np.float32))
    lfeat = leave_features(fit.states_after, torch.tensor(rank), resp)
    last_day = int(data.log["day"].max())
    lfit = fit_learned_leave(lfeat, torch.tensor(last), torch.tensor(data.log["day"].to_numpy() == last_day), seed=cfg.seed)
    log(f"[build] leave model held-out NLL {lfit.heldout_nll:.4f} (constant {lfit.constant_nll:.4f}), AUC {lfit.heldout_auc:.3f}")

    # Return model: one example per session, at its last exposure; split by user.
    t = sessions.table
    rng = np.random.default_rng(cfg.seed + 1)
    test_users = np.zeros(data.n_users, dtype=bool)
    test_users[rng.permutation(data.n_users)[: int(round(cfg.test_user_fraction * data.n_users))]] = True
    last_row = np.flatnonzero(last)[np.argsort(sessions.session_of[last], kind="stable")]
    prev_gap = np.r_[0.0, t["return_gap"].to_numpy()[:-1]]
    prev_gap = np.where(t["index_in_user"].to_numpy() == 0, 0.0, np.nan_to_num(prev_gap))
    counts = torch.tensor(t[[f"n_{b}" for b in BEHAVIOURS]].to_numpy(np.float32))
    length = torch.tensor(t["length"].to_numpy())
    rfeat = session_features(
        fit.states_after[last_row], length, counts, torch.tensor(t["watch_time"].to_numpy()),
        torch.tensor(t["index_in_user"].to_numpy()), torch.tensor(prev_gap),
    )
    censored = torch.tensor(t["censored"].to_numpy())
    gap = torch.tensor(np.nan_to_num(t["return_gap"].to_numpy(), nan=1.0))
    rfit = fit_learned_return(
        rfeat, gap, censored, torch.tensor(t["observed_days"].to_numpy()),
        torch.tensor(test_users[t["user_id"].to_numpy()]), cfg.max_return_day, seed=cfg.seed,
    )
    log(f"[build] return model held-out NLL {rfit.heldout_nll:.4f} (best constant {rfit.constant_nll:.4f})")

    members, ens_meta = _fit_members(cfg, data, t, last_row, prev_gap, counts, length, censored, gap, test_users,
                                     progress, log)

    init_items, init_resp, init_pad = _initial_histories(data, cfg.response.window)
    weights = reward_weights(data)
    w = torch.tensor(weights)
    ref_reward = float((resp @ w).mean())
    tensors = {
        "init_items": init_items, "init_resp": init_resp, "init_pad": init_pad,
        "personal": fit_personal_term(sessions, data.n_users, cfg.personal_prior),
        "item_tag": _item_table(data, "tag"), "item_author": _item_table(data, "author_id"),
        "test_users": torch.tensor(test_users),
        "item_exposures": torch.bincount(torch.tensor(data.log["item_id"].to_numpy()), minlength=data.n_items),
    }
    obs_gaps = sessions.observed["return_gap"].to_numpy()
    real = {
        "behaviour_rates": data.behaviour_rates(),
        "mean_session_length": float(t["length"].mean()),
        "session_length_hist": np.bincount(np.minimum(t["length"].to_numpy(), 20), minlength=21)[1:].tolist(),
        "return_day_hist": np.bincount(np.minimum(obs_gaps, cfg.max_return_day).astype(int), minlength=cfg.max_return_day + 1)[1:].tolist(),
        "observed_days_hist": np.bincount(np.minimum(t["observed_days"].to_numpy(), 60), minlength=61).tolist(),
        "mean_return_day": float(obs_gaps.mean()) if len(obs_gaps) else None,
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "retentionrl_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": None,
        "dataset": data.name,
        "source": {k: v for k, v in data.source.items() if k != "dir"},
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": data.n_interactions,
        "behaviours": list(data.behaviours),
        "user_cardinalities": list(data.user_features.categorical.values()),
        # Column names and raw values of the codes (code c is vocab[c - 1]): lets a policy route users by a
        # named feature (RLUR's activity groups) without the data files.
        "user_features": {c: list(data.user_features.vocab.get(c, [])) for c in data.user_features.categorical},
        "item_cardinalities": list(data.item_features.categorical.values()),
        "reward_weights": weights,
        "reference_reward": ref_reward,
        "watch_sigma": fit.watch_sigma,
        "max_return_day": cfg.max_return_day,
        "auc": fit.auc,
        "watch_rmse": fit.watch_rmse,
        "response_history": fit.history,
        # What one example of the learned leave / return models is: the env refuses a bundle without this.
        "learned_unit": LEARNED_UNIT,
        "leave_in_dim": int(lfeat.shape[1]),
        "leave_fit": {"heldout_nll": lfit.heldout_nll, "constant_nll": lfit.constant_nll, "heldout_auc": lfit.heldout_auc},
        "return_in_dim": int(rfeat.shape[1]),
        "return_fit": {"heldout_nll": rfit.heldout_nll, "constant_nll": rfit.constant_nll,
                       "constant_probs": rfit.constant_probs, "n_train": rfit.n_train, "n_test": rfit.n_test},
        "ensemble": ens_meta,
        "real": real,
    }
    meta["build_seconds"] = round(time.time() - t0, 1)
    sim = Simulator(fit.model.eval(), lfit.model.eval(), rfit.model.eval(), tensors, meta, to_dict(cfg), members)
    sim.inputs = input_spec(data)
    log(f"[build] done in {meta['build_seconds']:.0f}s")
    return sim


def _fit_members(cfg: BuildConfig, data: Interactions, t: pd.DataFrame, last_row: np.ndarray, prev_gap: np.ndarray,
                 counts: torch.Tensor, length: torch.Tensor, censored: torch.Tensor, gap: torch.Tensor,
                 test_users: np.ndarray, progress: bool, log) -> tuple[list, dict]:
    """M bootstrap members (response model, learned return model), each on a resample of users with
    replacement; the return model's held-out users stay out of every member's return fit."""
    ec = cfg.ensemble
    if ec.members <= 0:
        return [], {"members": 0}
    rcfg = replace(cfg.response, epochs=max(1, min(ec.epochs, cfg.response.epochs)))
    session_user = t["user_id"].to_numpy()
    members, aucs, nlls = [], [], []
    t0 = time.time()
    for m in range(ec.members):
        seed = cfg.seed + 1000 + m
        users = np.bincount(np.random.default_rng(seed).integers(0, data.n_users, data.n_users), minlength=data.n_users)
        fit = train_response_model(data, rcfg, seed=seed, progress=progress, user_counts=users)
        feat = session_features(fit.states_after[last_row], length, counts, torch.tensor(t["watch_time"].to_numpy()),
                                torch.tensor(t["index_in_user"].to_numpy()), torch.tensor(prev_gap))
        reps = np.where(test_users[session_user], 0, users[session_user])  # bootstrap of the training users' sessions
        rfit = fit_learned_return(
            feat, gap, censored, torch.tensor(t["observed_days"].to_numpy()), torch.tensor(test_users[session_user]),
            cfg.max_return_day, seed=seed, epochs=ec.return_epochs,
            train_index=torch.tensor(np.repeat(np.arange(len(t)), reps)),
        )
        members.append((fit.model.eval(), rfit.model.eval()))
        aucs.append({b: v["model"] for b, v in fit.auc.items()})
        nlls.append(rfit.heldout_nll)
    click = [a.get("click") for a in aucs]
    log(f"[build] ensemble of {ec.members} (bootstrap of users, {rcfg.epochs} epochs): held-out-day click AUC "
        f"{', '.join('–' if c is None else f'{c:.3f}' for c in click)}; return held-out NLL "
        f"{', '.join(f'{x:.4f}' for x in nlls)} ({time.time() - t0:.0f}s)")
    return members, {"members": ec.members, "bootstrap": "users", "epochs": rcfg.epochs,
                     "return_epochs": ec.return_epochs, "auc": aucs, "return_heldout_nll": nlls,
                     "build_seconds": round(time.time() - t0, 1)}


def build_and_save(cfg: BuildConfig, out: str | Path, progress: bool = True, log=print) -> Path:
    sim = build_simulator(cfg, progress=progress, log=log)
    return sim.save(out)
