"""A simulator bundle: everything needed to run the environment, in one directory.

    BUNDLE/
      config.yaml   how it was built (dataset, seeds, response-model hyper-parameters)
      meta.json     sizes, behaviours, reward weights, fit reports (AUC table, leave / return held-out scores)
      weights.pt    tensors only (response / leave / return weights, the ensemble members' response and
                    return weights, feature tables, initial histories, per-user return terms); loaded with
                    ``torch.load(weights_only=True)``
      inputs.json   how raw log values map to the simulator's ids and features (the source's item id of each
                    dense item id, the user features' raw values and numeric scales): what a served policy needs
                    to read a real request (``retentionrl export``). Optional: a bundle built before it existed
                    gets it from its data with ``retentionrl simulator inputs``.

The directory is written to a temporary sibling and renamed into place, so a crash never leaves half a bundle.

A simulator's identity is :attr:`Simulator.fingerprint`, a content hash of what it simulates (build config, meta
without the build's timestamp and duration, every tensor of ``state_dict()``): a copied or re-saved bundle keeps
it, any changed weight, table or setting changes it. Runs record it and refuse another simulator. ``inputs.json``
is outside the fingerprint: it names what the simulator's ids stand for, it does not change what is simulated (and
so adding it to an existing bundle keeps the bundle's runs valid).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from retentionrl.config import from_dict
from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import FeatureTensors
from retentionrl.simulator.env import EnvConfig, RetentionEnv, preset
from retentionrl.simulator.leave import LearnedLeave, TemperLeave
from retentionrl.simulator.response import ResponseConfig, ResponseModel
from retentionrl.simulator.returns import GeometricReturn, LearnedReturn
from retentionrl.utils.io import atomic_dir

FORMAT_VERSION = 1
# The learned leave / return models' features are per exposure (any slate size); bundles built before this was
# recorded in meta.json fitted them with one logged exposure standing for one request, and are refused.
LEARNED_UNIT = "exposure"
FILES = ("config.yaml", "meta.json", "weights.pt")
INPUTS = "inputs.json"  # optional (see the module docstring)
#: meta.json fields that describe the build, not the simulator (left out of the fingerprint)
VOLATILE_META = ("built_at", "build_seconds")
#: hex digits of the fingerprint shown in messages and tables
SHORT = 16
_FEATURE_TABLES = ("user_cat", "user_num", "item_cat", "item_num")  # ResponseModel buffers
TENSORS = ("init_items", "init_resp", "init_pad", "personal", "item_tag", "item_author", "test_users", "item_exposures")


class BundleError(RetentionRLError):
    """A missing, corrupt or mismatched simulator bundle."""


class Simulator:
    """The learned user model plus the tables the environment needs. ``make_env`` gives a :class:`RetentionEnv`."""

    def __init__(self, response: ResponseModel, leave: LearnedLeave | None, returns: LearnedReturn | None,
                 tensors: dict[str, Tensor], meta: dict[str, Any], build_config: dict[str, Any],
                 members: list[tuple[ResponseModel, LearnedReturn]] | None = None) -> None:
        self.response, self.leave_model, self.return_model = response, leave, returns
        # Bootstrap members (response, learned return): they only measure disagreement, never simulate.
        self.members = list(members or [])
        self._reference: dict[str, dict[str, float | None]] = {}  # logged-like disagreement by env config
        self.tensors, self.meta, self.build_config = tensors, meta, build_config
        for name in TENSORS:
            setattr(self, name, tensors[name])
        self.n_users = int(meta["n_users"])
        self.n_items = int(meta["n_items"])
        self.reward_weights: list[float] = list(meta["reward_weights"])
        self.watch_sigma = float(meta["watch_sigma"])
        self.max_return_day = int(meta["max_return_day"])
        self._state_weights: dict[int, Tensor] = {}  # random_state return terms by seed (computed once)
        self.path: Path | None = None  # the bundle directory it was loaded from (None: built in memory)
        self.inputs: dict[str, Any] | None = None  # inputs.json (simulator.build.input_spec), None if absent

    @cached_property
    def fingerprint(self) -> str:
        """sha256 (64 hex digits) over the canonical JSON of the build config and of the meta without
        :data:`VOLATILE_META`, then every ``state_dict()`` tensor (name, dtype, shape, raw bytes) in name order.
        Equal for a bundle and its copies or re-saves (and for an in-memory simulator and its saved bundle);
        cached, as a simulator is not modified after construction."""
        h = hashlib.sha256()
        meta = {k: v for k, v in self.meta.items() if k not in VOLATILE_META}
        for part in (self.build_config, meta):
            h.update(json.dumps(part, sort_keys=True, separators=(",", ":"), default=str).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy
        return h.hexdigest()

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:SHORT]

    # --- pieces the environment asks for -------------------------------------------------------------------
    def user_pool(self, which: str) -> Tensor:
        ids = torch.arange(self.n_users)
        if which == "all":
            return ids
        pool = ids[self.test_users] if which == "test" else ids[~self.test_users]
        if len(pool) == 0:
            raise RetentionRLError(f"the bundle has no '{which}' users")
        return pool

    def return_time_range(self, cfg: EnvConfig | str = "kuaisim", users: str = "test") -> tuple[float, float]:
        """(floor, ceiling) of the mean return day over ``users`` that *any* policy can reach under a geometric
        return model: ``P = bias + personal(u) + kappa * r`` is monotone in the session's feedback r (the mean
        immediate reward, or the mean of ``Σ_b v_b y_b`` with ``returns.feedback_weights`` v), which lies in
        ``[sum of negative weights, sum of positive weights]`` (every shown item with every behaviour, or none).
        It measures how much leverage a ranking policy has on return time here."""
        from retentionrl.simulator.returns import truncated_geometric_mean

        if isinstance(cfg, str):
            cfg = preset(cfg)
        if cfg.returns.kind != "geometric" or cfg.returns.personal == "random_state":
            raise RetentionRLError("return_time_range needs the geometric return model with a per-user personal term "
                                   "(the learned and random_state ones depend on the state the policy shapes)")
        ret = self.make_returns(replace(cfg, max_return_day=cfg.max_return_day or self.max_return_day))
        pool = self.user_pool(users)
        w = cfg.returns.feedback_weights  # the weights of the feedback the return law reads
        if w is None:
            w = cfg.reward_weights if cfg.reward_weights is not None else self.reward_weights
        w = torch.tensor(w, dtype=torch.float32)
        days = [float(truncated_geometric_mean(ret.probability(pool, torch.full((len(pool),), float(r))), ret.max_day).mean())
                for r in (w.clamp(min=0).sum(), w.clamp(max=0).sum())]
        return days[0], days[1]

    def _check_learned_unit(self, what: str) -> None:
        unit = self.meta.get("learned_unit")
        if unit != LEARNED_UNIT:
            raise BundleError(
                f"this bundle's learned {what} model was fitted with {'one exposure = one request' if unit is None else repr(unit)} "
                f"features, not per exposure at any slate size; rebuild it with 'retentionrl simulator build'"
            )

    def make_leave(self, cfg: EnvConfig, n: int):
        lc = cfg.leave
        if lc.kind == "learned":
            if self.leave_model is None:
                raise RetentionRLError("this bundle has no learned leave model")
            self._check_learned_unit("leave")
            return self.leave_model
        sat = lc.kind == "satisfaction"
        if lc.satisfaction_gain < 0 or (lc.max_requests is not None and lc.max_requests < 1):
            raise RetentionRLError("env.leave: satisfaction_gain must be >= 0 and max_requests >= 1 (or null)")
        if lc.satisfaction_gain > 0 and not sat:
            raise RetentionRLError("env.leave.satisfaction_gain needs leave kind 'satisfaction'")
        return TemperLeave(n, lc.initial_temper, lc.satisfaction_drop if sat else 0.0,
                           float(self.meta["reference_reward"]), lc.satisfaction_gain if sat else 0.0, lc.max_requests)

    def make_returns(self, cfg: EnvConfig):
        rc = cfg.returns
        if rc.kind == "learned":
            if self.return_model is None:
                raise RetentionRLError("this bundle has no learned return model")
            self._check_learned_unit("return")
            if cfg.max_return_day != self.return_model.max_day:
                raise RetentionRLError(
                    f"the learned return model covers days 1..{self.return_model.max_day}; "
                    f"max_return_day {cfg.max_return_day} does not match"
                )
            return self.return_model
        if rc.personal == "random_state":
            return GeometricReturn(cfg.max_return_day, rc.bias, rc.feedback_influence, None,
                                   self._random_state_weights(rc.state_seed) * rc.personal_scale)
        personal = self.personal * rc.personal_scale if rc.personal == "fitted" else None
        return GeometricReturn(cfg.max_return_day, rc.bias, rc.feedback_influence, personal)

    @torch.no_grad()
    def _random_state_weights(self, seed: int, n: int = 2048) -> Tensor:
        """(D_state,) a seeded random direction, scaled so that ``state @ w`` over (up to) n users' logged
        initial states has the same standard deviation as the fitted personal term."""
        if seed not in self._state_weights:  # every env (and every evaluation seed) asks for it
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(self.response.cfg.dim, generator=g)
            users = torch.randperm(self.n_users, generator=g)[:n]
            state = self.response.init_cache(users, self.init_items[users], self.init_resp[users],
                                             self.init_pad[users]).state
            self._state_weights[seed] = w * (self.personal.std() / (state @ w).std().clamp(min=1e-6))
        return self._state_weights[seed]

    def make_env(self, cfg: EnvConfig | str = "kuaisim", **overrides) -> RetentionEnv:
        if isinstance(cfg, str):
            cfg = preset(cfg, **overrides)
        elif overrides:
            raise RetentionRLError("overrides go with a preset name, not with an EnvConfig")
        return RetentionEnv(self, cfg)

    # --- persistence ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        out = {f"response.{k}": v for k, v in self.response.state_dict().items()}
        if self.leave_model is not None:
            out.update({f"leave.{k}": v for k, v in self.leave_model.state_dict().items()})
        if self.return_model is not None:
            out.update({f"return.{k}": v for k, v in self.return_model.state_dict().items()})
        for m, (resp, ret) in enumerate(self.members):
            out.update({f"member{m}.response.{k}": v for k, v in resp.state_dict().items()
                        if k not in _FEATURE_TABLES})  # members share the main model's feature tables
            out.update({f"member{m}.return.{k}": v for k, v in ret.state_dict().items()})
        out.update({f"table.{k}": v for k, v in self.tensors.items()})
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            (tmp / "config.yaml").write_text(yaml.safe_dump(self.build_config, sort_keys=False))
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
            torch.save(self.state_dict(), tmp / "weights.pt")
            if self.inputs is not None:
                (tmp / INPUTS).write_text(json.dumps(self.inputs) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Simulator":
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: not a simulator bundle directory (build one with 'retentionrl simulator build')")
        for name in FILES:
            if not (path / name).is_file():
                raise BundleError(f"{path}: bundle file '{name}' is missing")
        try:
            build_config = yaml.safe_load((path / "config.yaml").read_text())
            meta = json.loads((path / "meta.json").read_text())
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: corrupt bundle metadata ({str(exc).splitlines()[0]})") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}/meta.json: unsupported bundle format {meta.get('format_version') if isinstance(meta, dict) else meta!r} (expected {FORMAT_VERSION})")
        try:
            weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged zip/pickle
            raise BundleError(f"{path}/weights.pt: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        try:
            sim = cls._from_parts(build_config, meta, weights)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise BundleError(f"{path}: weights do not match the bundle's metadata ({str(exc).splitlines()[0][:300]})") from None
        sim.path = path
        if (path / INPUTS).is_file():
            try:
                sim.inputs = json.loads((path / INPUTS).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BundleError(f"{path}/{INPUTS}: corrupt ({str(exc).splitlines()[0]})") from None
        return sim

    @classmethod
    def _from_parts(cls, build_config: dict, meta: dict, weights: dict[str, Tensor]) -> "Simulator":
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}

        resp_sd = part("response.")
        users = FeatureTensors(resp_sd["user_cat"], resp_sd["user_num"], list(meta["user_cardinalities"]))
        items = FeatureTensors(resp_sd["item_cat"], resp_sd["item_num"], list(meta["item_cardinalities"]))
        rcfg = from_dict(ResponseConfig, build_config["response"], "config.yaml response")
        response = ResponseModel(users, items, rcfg)
        response.load_state_dict(resp_sd, strict=True)
        leave = ret = None
        if meta.get("leave_in_dim"):
            leave = LearnedLeave(int(meta["leave_in_dim"]))
            leave.load_state_dict(part("leave."), strict=True)
        if meta.get("return_in_dim"):
            ret = LearnedReturn(int(meta["return_in_dim"]), int(meta["max_return_day"]))
            ret.load_state_dict(part("return."), strict=True)
        tables = part("table.")
        missing = [t for t in TENSORS if t not in tables]
        if missing:
            raise KeyError(f"table '{missing[0]}' missing from weights.pt")
        n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
        for name, rows in (("init_items", n_users), ("personal", n_users), ("test_users", n_users),
                           ("item_tag", n_items), ("item_author", n_items), ("item_exposures", n_items)):
            if tables[name].shape[0] != rows:
                raise ValueError(f"table '{name}' has {tables[name].shape[0]} rows, meta.json says {rows}")
        if response.item_cat.shape[0] != n_items or response.user_cat.shape[0] != n_users:
            raise ValueError("feature tables do not match n_users / n_items")
        members = []
        for m in range(int((meta.get("ensemble") or {}).get("members", 0))):
            member = ResponseModel(users, items, rcfg)
            sd = part(f"member{m}.response.")
            member.load_state_dict({**{k: resp_sd[k] for k in _FEATURE_TABLES}, **sd}, strict=True)
            mret = LearnedReturn(int(meta["return_in_dim"]), int(meta["max_return_day"]))
            mret.load_state_dict(part(f"member{m}.return."), strict=True)
            members.append((member.eval(), mret.eval()))
        return cls(response.eval(), leave, ret, tables, meta, build_config, members)
