"""What every training run has, online or offline: its config (:class:`RunConfig`), its directory (:class:`RunDir`)
and its provenance (which simulator bundle made it).

A run directory holds ``config.yaml`` (the full train config plus a ``bundle:`` section), ``metrics.jsonl``,
``checkpoints/last.pt`` and ``summary.json``. The ``bundle`` section (also copied into ``summary.json``) is::

    bundle: {fingerprint: <sha256 of the simulator, Simulator.fingerprint>, path: <bundle dir>, dataset: <name>}

``path`` is relative to the run directory, so a project tree holding both can move; it is absolute only when the
bundle and the run share no directory but ``/`` (e.g. ``/data/bundles/x`` for ``/home/me/runs/y``), and ``null``
for a simulator that was never loaded from disk. The fingerprint is what is checked: resuming, evaluating or
comparing on another simulator is refused, naming both fingerprints; ``path`` is where ``retentionrl evaluate RUN``
and ``train --resume RUN`` find the simulator when no ``--simulator`` is given. A run's ``config.yaml`` is also a
valid ``train --config``: its ``bundle`` section is not a setting (:func:`pop_record`); without ``--simulator`` the
new run starts on the bundle it records (the path taken relative to the config's folder, the fingerprint checked).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from torch import nn

from retentionrl.agents import AGENTS, Agent, make_agent
from retentionrl.config import OMIT_IF_DEFAULT, ConfigError, check_counts, from_dict, load_yaml, merge, to_dict
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.nets.state import compile_encoders, cpp_compiler
from retentionrl.simulator.bundle import SHORT, Simulator
from retentionrl.simulator.env import PRESETS, EnvConfig, preset
from retentionrl.utils.io import write_text_atomic

#: the config.yaml / summary.json section that records the simulator
BUNDLE_KEY = "bundle"
class TensorBoardMirror:
    """The numbers of each ``metrics.jsonl`` record as TensorBoard scalars ``<event>/<key>`` at its step, as SB3
    and CleanRL users expect; ``metrics.jsonl`` stays the source of truth. A resumed run replays from a step:
    ``purge_step`` drops the events written after it, as ``truncate_metrics`` drops the records."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        try:  # optional extra: pip install 'retentionrl[tensorboard]'
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RetentionRLError("TensorBoard event files were asked for but TensorBoard is not installed "
                                   "(pip install 'retentionrl[tensorboard]')") from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def add(self, record: dict[str, Any]) -> None:
        event = record.get("event", "log")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{event}/{key}", value, record["step"])
        self.writer.flush()  # a record every log_every steps: cheap, and a crash loses nothing


# Env fields the loops set themselves, and where the value really comes from.
_LOOP_SETS_ENV = {
    "n_users": "give the training users as the top-level 'n_users' ('n_log_users' offline), the evaluation users as "
               "'eval.n_users'",
    "users": "training draws the bundle's train users, evaluation draws 'eval.users' (default: test)",
    "action_mode": "the agent decides it (fusion weights or item scores), in training and evaluation alike",
}


@dataclass
class RunConfig:
    """What every training run has, online or offline."""

    algo: str = "td3"
    label: str | None = None  # name in comparison tables (default: algo)
    seed: int = 0
    preset: str = "kuaisim"
    env: dict[str, Any] = field(default_factory=dict)  # EnvConfig overrides
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 500
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields
    agent: dict[str, Any] = field(default_factory=dict)  # the algorithm's own config
    # Which loop trains the agent (None: by algorithm, training.trainer_for); "offline" trains an online-capable
    # learner (TD3, DDPG, SAC) from the logs of a behaviour policy alone. Left out of the saved config while None.
    loop: Literal["online", "offline"] | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})
    # torch.compile the agent's state encoders (nets.state.compile_encoders): faster long runs, the same algorithm;
    # float rounding differs from eager, so it is part of the config (and of a grid cell's key) when on.
    compile: bool = field(default=False, metadata={OMIT_IF_DEFAULT: True})

    def env_overrides(self) -> dict[str, Any]:
        """``env`` without ``action_mode``: the agent decides that, in training and in evaluation alike."""
        return {k: v for k, v in self.env.items() if k != "action_mode"}

    def validate(self, where: str = "train config") -> None:
        """Refuse, before anything is written, what would fail mid-run or be silently ignored; messages start
        with ``where`` (the config file) and the dotted key."""
        check_counts(self, where, ("log_every", "eval_every", "checkpoint_every"))
        if self.preset not in PRESETS:
            raise ConfigError(f"{where}.preset: unknown simulator preset {self.preset!r} (known: {', '.join(PRESETS)})")
        for key, source in _LOOP_SETS_ENV.items():
            if key in self.env:
                raise ConfigError(f"{where}.env.{key}: the training loop sets this itself; {source}")
        from_dict(EnvConfig, merge(PRESETS[self.preset], self.env), f"{where}.env")
        try:
            ev = self.eval_config()
            if ev.preset not in PRESETS:
                raise ConfigError(f"eval.preset: unknown simulator preset {ev.preset!r} (known: {', '.join(PRESETS)})")
            from_dict(EnvConfig, merge(PRESETS[ev.preset], ev.env_overrides), "eval.env_overrides")
        except RetentionRLError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def env_config(self) -> EnvConfig:
        """The environment the agent acts in (its features' scales come from it)."""
        return preset(self.preset, **self.env_overrides())

    def eval_config(self) -> EvalConfig:
        cfg = from_dict(EvalConfig, {"preset": self.preset, "env_overrides": self.env_overrides(), **self.eval}, "eval")
        cfg.validate()
        return cfg


def portable_path(target: str | Path, start: str | Path) -> str:
    """``target`` relative to the directory ``start`` (both resolved), or absolute when they share only ``/``."""
    target, start = Path(target).resolve(), Path(start).resolve()
    if os.path.commonpath([target, start]) == target.anchor:
        return str(target)
    return os.path.relpath(target, start)


def bundle_record(sim: Simulator, run_dir: str | Path) -> dict[str, Any]:
    """The ``bundle`` section of a run in ``run_dir`` made on ``sim``."""
    path = getattr(sim, "path", None)
    return {"fingerprint": sim.fingerprint, "path": None if path is None else portable_path(path, run_dir),
            "dataset": sim.meta.get("dataset")}


def describe(record: dict[str, Any] | None) -> str:
    """``<short fingerprint> (<path>)`` for messages."""
    if record is None:
        return "an unrecorded simulator"
    return f"{str(record['fingerprint'])[:SHORT]} ({record.get('path') or 'in memory'})"


def pop_record(raw: dict[str, Any], where: str | Path) -> dict[str, Any] | None:
    """Remove the ``bundle`` section from the run config ``raw`` and return it (None if it has none)."""
    record = raw.pop(BUNDLE_KEY, None)
    if record is not None and not (isinstance(record, dict) and isinstance(record.get("fingerprint"), str)):
        raise RetentionRLError(f"{where}: '{BUNDLE_KEY}' must be a mapping with a 'fingerprint'")
    return record


def recorded_path(record: dict[str, Any], base: str | Path, owner: str | Path) -> Path:
    """The bundle directory ``record`` names (its ``path`` is relative to ``base``); errors name ``owner``."""
    if record.get("path") is None:
        raise RetentionRLError(f"{owner}: made on an in-memory simulator ({describe(record)}); pass --simulator")
    path = Path(os.path.normpath(Path(base) / record["path"]))
    if not path.is_dir():
        raise RetentionRLError(f"{owner}: its simulator bundle {describe(record)} is not at {path} (moved?); "
                               "pass --simulator BUNDLE (a bundle with the same fingerprint)")
    return path


def load_recorded(record: dict[str, Any], base: str | Path, owner: str | Path) -> Simulator:
    """The simulator ``record`` names, refused if the bundle now at its path is another one (e.g. rebuilt)."""
    path = recorded_path(record, base, owner)
    sim = Simulator.load(path)
    if sim.fingerprint != record["fingerprint"]:
        raise RetentionRLError(f"{owner}: records simulator {describe(record)}, but the bundle at {path} is now "
                               f"{sim.short_fingerprint}; pass --simulator BUNDLE to choose one")
    return sim


class RunDir:
    """A run directory. ``tensorboard``: :meth:`log` also mirrors each record as TensorBoard scalars in
    ``<run>/tensorboard`` — a way of viewing the run, not a setting of it, so it is not in the config (a grid
    cell's key does not change) and it belongs to this object, not to the process (runs that follow in the same
    process, a test or a one-worker grid, write no events unless they ask)."""

    def __init__(self, path: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoints" / "last.pt"
        self.summary = self.path / "summary.json"
        self.bundle: dict[str, Any] | None = None  # the recorded simulator (set by open / read_config)
        self._tensorboard: TensorBoardMirror | None = None
        self._purge_step: int | None = None  # the step a resumed run replays from (for the TensorBoard mirror)

    @classmethod
    def open(cls, path: str | Path, cfg_dict: dict[str, Any], resume: bool, sim: Simulator,
             tensorboard: bool = False) -> "RunDir":
        """A new run writes its config and ``sim``'s record; a resumed one must have been started with the same
        config on the same simulator (same fingerprint; the bundle may have moved)."""
        run = cls(path, tensorboard)
        if resume:
            saved, record = run.read_config()
            if saved != cfg_dict:
                diff = sorted(k for k in set(saved) | set(cfg_dict) if saved.get(k) != cfg_dict.get(k))
                raise RetentionRLError(f"{run.path}: resuming with a different config (differs in: {', '.join(diff)})")
            run.resumable_record()
            run.check_simulator(sim, "resume")
        else:
            if run.config.exists():
                raise RetentionRLError(f"{run.path}: already holds a run (use --resume to continue it)")
            run.bundle = bundle_record(sim, run.path)
            created = not run.path.exists()
            run.path.mkdir(parents=True, exist_ok=True)
            try:
                write_text_atomic(run.config, yaml.safe_dump({**cfg_dict, BUNDLE_KEY: run.bundle}, sort_keys=False))
            except RetentionRLError:
                if created:  # a failed start leaves no empty run directory behind
                    run.path.rmdir()
                raise
        return run

    def check_is_run(self) -> None:
        if not self.config.is_file():
            raise RetentionRLError(f"{self.path}: not a run directory (no config.yaml)")

    def read_config(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(train config as saved, ``bundle`` record or None for a run made before runs recorded it)."""
        self.check_is_run()
        raw = load_yaml(self.config)  # not YAML / not a mapping: an error naming the file
        if not isinstance(raw.get("algo"), str) or not isinstance(raw.get("seed"), int):
            raise RetentionRLError(f"{self.config}: not a run config (no 'algo' and 'seed'; damaged or emptied?)")
        record = pop_record(raw, self.config)
        self.bundle = record
        return raw, record

    def resumable_record(self) -> dict[str, Any]:
        """The ``bundle`` record, or an error for a run made before runs recorded it (its simulator is unknown)."""
        rec = self.bundle if self.bundle is not None else self.read_config()[1]
        if rec is None:
            raise RetentionRLError(f"{self.config}: records no simulator fingerprint (a run made before runs recorded "
                                   "their bundle), so resuming cannot check the simulator; start the run again")
        return rec

    def check_simulator(self, sim: Simulator, action: str = "evaluate") -> None:
        """Refuse ``sim`` if it is not the simulator the run was made on (a run with no record passes: the caller
        chose the simulator explicitly)."""
        rec = self.bundle if self.bundle is not None else self.read_config()[1]
        if rec is not None and rec["fingerprint"] != sim.fingerprint:
            given = describe({"fingerprint": sim.fingerprint, "path": str(sim.path) if sim.path else None})
            raise RetentionRLError(f"{self.path}: made on simulator {describe(rec)}, cannot {action} it on "
                                   f"simulator {given}")

    def simulator_path(self) -> Path:
        """Where the run's own bundle is (for commands given no ``--simulator``)."""
        rec = self.bundle if self.bundle is not None else self.read_config()[1]
        if rec is None:
            raise RetentionRLError(f"{self.config}: records no simulator bundle (a run made before runs recorded "
                                   "it); pass --simulator BUNDLE")
        return recorded_path(rec, self.path, self.path)

    def load_simulator(self, simulator: str | Path | None = None) -> Simulator:
        """``simulator`` (checked against the record) or the run's own bundle."""
        self.read_config()  # a wrong run path fails before any bundle is loaded
        sim = Simulator.load(simulator if simulator is not None else self.simulator_path())
        self.check_simulator(sim)
        return sim

    def provenance(self, sim: Simulator, eval_cfg: EvalConfig) -> dict[str, Any]:
        """What ``summary.json`` records besides the results: the simulator, the resolved evaluation protocol and
        the size of the user pool it drew from (``compare`` checks the first two and prints the last)."""
        return {BUNDLE_KEY: self.bundle, "eval_config": to_dict(eval_cfg),
                "eval_pool_users": len(sim.user_pool(eval_cfg.users))}

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` of a finished run; a damaged one is an error naming the file."""
        if not self.summary.is_file():
            raise RetentionRLError(f"{self.path}: the run has not finished (no summary.json; resume it with --resume)")
        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RetentionRLError(f"{self.summary}: not valid JSON ({_reason(exc)})") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("eval"), dict):
            raise RetentionRLError(f"{self.summary}: not a run summary (no 'eval' results)")
        return summary

    def read_metrics(self, drop_torn_tail: bool = False) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (none if it is missing). A line that is not a JSON record with an
        integer ``step`` is an error naming the file and line, except, with ``drop_torn_tail``, a last line
        without its newline: a record cut off by a crash (resuming replays it)."""
        if not self.metrics.is_file():
            return []
        try:
            text = self.metrics.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RetentionRLError(f"{self.metrics}: not UTF-8 text (byte {exc.start})") from None
        lines = text.split("\n")  # the last item is "" when the file ends with a newline
        records = []
        for i, ln in enumerate(lines, 1):
            if not ln:
                continue
            try:
                rec = json.loads(ln)
                ok = isinstance(rec, dict) and isinstance(rec.get("step"), int)
                why = "not a record with an integer 'step'"
            except json.JSONDecodeError as exc:
                ok, why = False, f"not valid JSON ({exc.msg} at column {exc.colno})"
            if not ok:
                if drop_torn_tail and i == len(lines):
                    break
                raise RetentionRLError(f"{self.metrics}, line {i}: {why}")
            records.append(rec)
        return records

    def log(self, record: dict[str, Any]) -> None:
        """Append one record; a failed write (full disk) leaves the file as it was and names it."""
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:
            with open(self.metrics, "ab", buffering=0) as fh:  # unbuffered: every byte written is known
                start = fh.tell()
                try:
                    done = 0
                    while done < len(data):
                        done += fh.write(data[done:])
                except OSError:
                    fh.truncate(start)  # no half record for the next reader
                    raise
        except OSError as exc:
            raise RetentionRLError(f"{self.metrics}: cannot write: {exc.strerror or exc}") from None
        if self.tensorboard:
            if self._tensorboard is None:
                self._tensorboard = TensorBoardMirror(self.path / "tensorboard", self._purge_step)
            self._tensorboard.add(record)

    def truncate_metrics(self, step: int) -> None:
        """Drop records written after ``step`` (they belong to the part of the run being replayed)."""
        self._purge_step = step + 1
        if not self.metrics.is_file():
            return
        keep = [rec for rec in self.read_metrics(drop_torn_tail=True) if rec["step"] <= step]
        write_text_atomic(self.metrics, "".join(json.dumps(rec) + "\n" for rec in keep))


def _reason(exc: json.JSONDecodeError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start}: {exc.reason}"
    return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"


def check_stop_after(stop_after: int | None, name: str = "stop_after") -> None:
    """Refuse a ``stop_after`` below 1 (0 or a negative count would stop after the first step, not before it)."""
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise RetentionRLError(f"{name} must be an integer >= 1 (steps or updates to run before stopping), "
                               f"got {stop_after!r}")


def build_agent(algo: str, sim: Simulator, agent_cfg: dict[str, Any], seed: int, env: EnvConfig,
                where: str = "train config", key: str = "agent", compile: bool = False) -> Agent:
    """:func:`make_agent` whose errors name the train config file and its key: the agents' own ``build``
    functions only know ``agent.<key>`` (``key`` is the section, ``behaviour_agent`` for offline logging).
    ``compile``: the run's ``compile`` option (the state encoders of the agent's modules compiled)."""
    if algo not in AGENTS:
        name = "algo" if key == "agent" else key.removesuffix("_agent")
        raise ConfigError(f"{where}.{name}: unknown algorithm '{algo}' (known: {', '.join(AGENTS)})")
    try:
        agent = make_agent(algo, sim, agent_cfg, seed=seed, env=env)
    except RetentionRLError as exc:
        msg = str(exc)
        cls = ConfigError if isinstance(exc, ConfigError) else RetentionRLError
        if msg.startswith(("agent.", "agent:")):  # 'agent.gamma: ...' / 'agent: unknown key ...'
            raise cls(f"{where}.{key}{msg[len('agent'):]}") from None
        raise cls(f"{where}: {msg}") from None
    if compile:
        if cpp_compiler() is None:  # inductor would fail at the first forward, mid-run, with a long trace
            raise ConfigError(f"{where}.compile: torch.compile needs a C++ compiler ($CXX, g++ or clang++ on PATH) "
                              "and none was found; install one or set compile: false")
        compile_encoders(m for m in vars(agent).values() if isinstance(m, nn.Module))
    return agent
