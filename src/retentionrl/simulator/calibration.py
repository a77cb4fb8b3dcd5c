"""Calibration: does the simulator, driven by a logged-like policy, reproduce the logs' statistics?

A *logged-like* policy samples slates in proportion to how often the logs exposed each item (Gumbel-top-K on
``log(exposures + 1)``), so the simulated users see roughly what the real users saw. We then compare, per
session, the simulated session length, per-exposure behaviour rates and return day with the real ones stored in
the bundle's ``meta["real"]``. It runs at the slate size the benchmarks use (the preset's, 6) unless told
otherwise, and says which. Session lengths are compared in exposures (a simulated session of n requests is
n·K exposures, so at K > 1 real sessions shorter than K cannot be matched: that share is a floor on the TV) and
also on the slate's grid (a real session of L exposures is ``ceil(L / K)`` requests).

Return days need care: the logs cover a short window (11 days for KuaiRand), so a real return gap is observed
only if it falls before the log ends. The real return-day histogram is therefore right-censored: long gaps are
under-represented. To compare like with like, each simulated session also draws an observation window ``c``
from the real sessions' ``observed_days`` distribution, and its return day ``d`` is kept only if ``d <= c``.
Both the raw and this censoring-matched simulated distribution are reported.

``calibration_report`` writes ``calibration.md``, ``calibration.json`` and three PNG plots, all atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.utils.scores import total_variation
from retentionrl.simulator.env import Obs
from retentionrl.utils.io import atomic_path, write_json_atomic, write_text_atomic

MAX_SESSION_LENGTH = 20  # real session_length_hist: lengths 1..20, last bucket = 20+


# --- logged-like policy ------------------------------------------------------------------------------------------
def item_popularity(sim, popularity: Tensor | None = None) -> Tensor:
    """(N,) float exposure counts of each item in the real log.

    Order of preference: an explicit ``popularity``, the bundle's ``tensors["item_exposures"]``, else uniform
    (all zeros, which the policy turns into equal weights).
    """
    n = sim.n_items
    if popularity is None:
        popularity = sim.tensors.get("item_exposures")
    if popularity is None:
        return torch.zeros(n)
    popularity = torch.as_tensor(popularity).float().flatten()
    if popularity.shape != (n,):
        raise RetentionRLError(f"popularity must have one value per item ({n}), got shape {tuple(popularity.shape)}")
    if (popularity < 0).any() or not torch.isfinite(popularity).all():
        raise RetentionRLError("popularity must be finite and non-negative")
    return popularity


class LoggedLikePolicy:
    """Items-mode policy: ``score_i = log(count_i + 1) + Gumbel``.

    Top-K of Gumbel-perturbed log-weights is a sample without replacement with probabilities proportional to
    ``count_i + 1`` (Gumbel-max trick), so a slate of size 1 picks item i with probability ∝ ``count_i + 1``.
    The ``+ 1`` keeps never-exposed items reachable, as in the logs' long tail.
    """

    def __init__(self, popularity: Tensor, seed: int = 0) -> None:
        """popularity: (N,) non-negative exposure counts."""
        self.log_weight = torch.log1p(torch.as_tensor(popularity).float())  # (N,)
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, obs: Obs) -> Tensor:
        """obs.candidates (C,) or (B, C) per row, obs.user (B,) -> (B, C) scores."""
        w = self.log_weight[obs.candidates].expand(len(obs.user), -1)  # (B, C)
        u = torch.rand(w.shape, generator=self.gen).clamp_(1e-12, 1.0 - 1e-7)
        return w - torch.log(-torch.log(u))  # + Gumbel(0, 1) noise


# --- simulation --------------------------------------------------------------------------------------------------
@dataclass
class SimulatedSessions:
    """Statistics of S completed simulated sessions (all tensors on CPU).

    session_requests: (S,) long, requests per session; session_exposures: (S,) long, requests × slate size;
    return_days: (S,) long in 1..D; behaviour_sums: (7,) positives over the sessions' exposures;
    n_exposures: total exposures; n_unfinished: admitted sessions still running at the step cap (dropped).
    """

    session_requests: Tensor
    session_exposures: Tensor
    return_days: Tensor
    behaviour_sums: Tensor
    n_exposures: int
    n_unfinished: int
    n_steps_run: int
    slate_size: int
    max_return_day: int

    @property
    def behaviour_rates(self) -> dict[str, float]:
        """Per-exposure rate of each behaviour."""
        rates = self.behaviour_sums / max(self.n_exposures, 1)
        return {b: float(r) for b, r in zip(BEHAVIOURS, rates)}


def simulate_logged_like(
    sim, preset: str = "learned", n_users: int = 512, n_steps: int | None = 200, seed: int = 0,
    slate_size: int | None = None, n_sessions: int | None = None, max_steps: int | None = None,
    popularity: Tensor | None = None, **env_overrides: Any,
) -> SimulatedSessions:
    """Run the logged-like policy on ``sim.make_env(preset, ...)`` and collect per-session statistics.

    Sessions are *admitted* by start time: those starting within the first ``n_steps`` steps, or (if
    ``n_sessions`` is given instead) the first ``n_sessions`` to start. Admitted sessions are then run to their
    end. Selecting by start rather than collecting whatever ended inside a fixed window avoids over-sampling
    short sessions (a window cuts long ones off). ``max_steps`` caps the total steps (default: ``n_steps`` +
    2000, or 5000 with ``n_sessions``); admitted sessions still running then are counted in ``n_unfinished``.

    ``slate_size``: None keeps the preset's (6, what the benchmarks use); 1 makes one request one exposure, as
    a log row. The learned leave / return models are per exposure, so either is within what they were fitted on.
    """
    if (n_steps is None) == (n_sessions is None):
        raise RetentionRLError("give exactly one of n_steps and n_sessions")
    if max_steps is None:
        max_steps = n_steps + 2000 if n_steps is not None else 5000
    if slate_size is not None:
        env_overrides = {**env_overrides, "slate_size": slate_size}
    env = sim.make_env(preset, n_users=n_users, action_mode="items", **env_overrides)
    policy = LoggedLikePolicy(item_popularity(sim, popularity), seed=seed + 1)
    B, K = env.B, env.K
    obs = env.reset(seed)

    requests = torch.zeros(B, dtype=torch.long)  # requests in each row's current session
    admitted = torch.zeros(B, dtype=torch.bool)  # the row's current session belongs to the sample
    started = 0

    def admit(new: Tensor, step: int) -> int:
        """Admit the sessions starting at ``step`` in rows ``new`` (B,) bool; returns how many."""
        if n_steps is not None:
            ok = new if step < n_steps else torch.zeros_like(new)
        else:  # quota: the first rows (by index) of this step until n_sessions are in
            ok = new & (torch.cumsum(new.long(), 0) <= n_sessions - started)
        admitted.logical_or_(ok)
        return int(ok.sum())

    started += admit(torch.ones(B, dtype=torch.bool), 0)
    lengths, days = [], []
    beh = torch.zeros(len(BEHAVIOURS))
    n_exp = 0
    step = 0
    while step < max_steps and admitted.any():
        out = env.step(policy(obs))
        obs = out.obs
        step += 1
        requests += 1
        beh += (out.responses * admitted[:, None, None]).sum((0, 1))
        n_exp += int(admitted.sum()) * K
        end = out.session_end
        done = end & admitted
        lengths.append(requests[done])
        days.append(out.return_day[done])
        requests[end] = 0
        admitted &= ~end
        started += admit(end, step)  # a row whose session ended starts a new one at the next step
    req = torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.long)
    return SimulatedSessions(
        session_requests=req, session_exposures=req * K,
        return_days=torch.cat(days) if days else torch.zeros(0, dtype=torch.long),
        behaviour_sums=beh, n_exposures=n_exp, n_unfinished=int(admitted.sum()), n_steps_run=step,
        slate_size=K, max_return_day=env.cfg.max_return_day,
    )


# --- censoring emulation -----------------------------------------------------------------------------------------
def censor_mask(return_days: Tensor, observed_days_hist: list[int] | Tensor, generator: torch.Generator) -> Tensor:
    """(S,) bool: would the logs have observed each return?

    For each session draw a window ``c`` from ``observed_days_hist`` (counts of c = 0, 1, ...; (C+1,)) and keep
    the return day ``d`` iff ``d <= c``. return_days: (S,) long, 1..D.
    """
    w = torch.as_tensor(observed_days_hist, dtype=torch.float64)
    if w.sum() <= 0:
        raise RetentionRLError("observed_days_hist is empty")
    if len(return_days) == 0:
        return torch.zeros(0, dtype=torch.bool)
    c = torch.multinomial(w, len(return_days), replacement=True, generator=generator)  # (S,) window in days
    return return_days <= c


def requests_histograms(real_exposure_hist: list[int], sim_requests: Tensor, slate_size: int) -> tuple[list[int], list[int]]:
    """Session lengths on the slate's grid: (real, sim) counts of 1..R requests, the last bin R+ with
    R = ceil(L / K) for the real histogram's last (open) bin L+. A real session of l exposures is ceil(l / K)."""
    L, K = len(real_exposure_hist), slate_size
    R = -(-L // K)
    real = [0] * R
    for l, c in enumerate(real_exposure_hist, 1):
        real[min(-(-l // K), R) - 1] += c
    return real, histogram(sim_requests, R)


def histogram(values: Tensor, n_bins: int) -> list[int]:
    """Counts of values 1..n_bins, the last bin holding everything >= n_bins. values: (S,) long >= 1."""
    v = values.clamp(max=n_bins)
    return torch.bincount(v - 1, minlength=n_bins)[:n_bins].tolist() if len(v) else [0] * n_bins


def _tv(p: list[int], q: list[int]) -> float | None:
    """TV distance, or None when either side has no mass."""
    return total_variation(p, q) if sum(p) > 0 and sum(q) > 0 else None


def _shares(h: list[int]) -> list[float]:
    s = sum(h)
    return [x / s if s else float("nan") for x in h]


def _mean_day(h: list[int]) -> float | None:
    s = sum(h)
    return float(np.dot(np.arange(1, len(h) + 1), h) / s) if s else None


# --- report ------------------------------------------------------------------------------------------------------
def compare(sim, stats: SimulatedSessions, seed: int = 0) -> dict[str, Any]:
    """All numbers of the simulated-vs-real comparison (JSON-able)."""
    real = sim.meta["real"]
    D = stats.max_return_day
    real_ret = list(real["return_day_hist"])
    if len(real_ret) != D:
        raise RetentionRLError(f"the bundle's real return-day histogram has {len(real_ret)} days, the env uses {D}")
    keep = censor_mask(stats.return_days, real["observed_days_hist"], torch.Generator().manual_seed(seed + 2))
    sim_ret = histogram(stats.return_days, D)
    sim_ret_c = histogram(stats.return_days[keep], D)
    real_len = list(real["session_length_hist"])
    sim_len = histogram(stats.session_exposures, len(real_len))
    real_req, sim_req = requests_histograms(real_len, stats.session_requests, stats.slate_size)
    sim_rates = stats.behaviour_rates
    rates = {
        b: {"real": real["behaviour_rates"].get(b), "sim": sim_rates[b],
            "abs_diff": abs(sim_rates[b] - real["behaviour_rates"][b]) if b in real["behaviour_rates"] else None}
        for b in BEHAVIOURS
    }
    n = len(stats.return_days)
    return {
        "n_sessions": n,
        "n_exposures": stats.n_exposures,
        "n_unfinished": stats.n_unfinished,
        "n_steps_run": stats.n_steps_run,
        "slate_size": stats.slate_size,
        "max_return_day": D,
        "return_day": {"real": real_ret, "sim": sim_ret, "sim_censored": sim_ret_c,
                       "observed_share_sim": int(keep.sum()) / n if n else None},
        # Means of the day histograms, gaps >= D counted as D on both sides (the simulator cannot exceed D).
        "mean_return_day": {"real": _mean_day(real_ret), "sim": _mean_day(sim_ret),
                            "sim_censored": _mean_day(sim_ret_c), "real_uncapped": real.get("mean_return_day")},
        "session_length": {"real": real_len, "sim": sim_len},
        "session_requests": {"real": real_req, "sim": sim_req},
        "mean_session_length": {"real": real["mean_session_length"],
                                "sim": float(stats.session_exposures.float().mean()) if n else None,
                                "sim_requests": float(stats.session_requests.float().mean()) if n else None},
        "behaviour_rates": rates,
        "tv_return_day": _tv(sim_ret, real_ret),
        "tv_return_day_censored": _tv(sim_ret_c, real_ret),
        "tv_session_length": _tv(sim_len, real_len),
        "tv_session_requests": _tv(sim_req, real_req),
        # Real sessions shorter than one slate: no simulated session can match them (floor of tv_session_length).
        "real_share_shorter_than_slate": sum(real_len[: stats.slate_size - 1]) / max(sum(real_len), 1),
    }


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _markdown(sim, res: dict[str, Any]) -> str:
    m, c = sim.meta, res["comparison"]
    lines = [
        f"# Simulator calibration — {m.get('dataset', '?')}",
        "",
        f"- preset: `{res['preset']}`, slate size {c['slate_size']}, {res['n_users']} parallel users, seed {res['seed']}",
        f"- policy: logged-like (slates sampled ∝ real item exposures + 1; popularity source: {res['popularity_source']})",
        f"- simulated sessions: {c['n_sessions']:,} ({c['n_exposures']:,} exposures, {c['n_steps_run']} steps, "
        f"{c['n_unfinished']} unfinished at the step cap and dropped)",
        f"- bundle: {m.get('n_users', '?'):,} users, {m.get('n_items', '?'):,} items, "
        f"{m.get('n_interactions', '?'):,} logged exposures",
        "",
        "## Response model: held-out-day AUC",
        "",
        "| behaviour | positives | model | popularity |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b, v in m.get("auc", {}).items():
        lines.append(f"| {b} | {v.get('positives', '–')} | {_fmt(v.get('model'), '.3f')} | {_fmt(v.get('popularity'), '.3f')} |")
    lf, rf = m.get("leave_fit") or {}, m.get("return_fit") or {}
    lines += [
        "",
        "## Leave and return models: held-out NLL",
        "",
        "| model | held-out NLL | constant NLL | other |",
        "| --- | ---: | ---: | --- |",
        f"| leave | {_fmt(lf.get('heldout_nll'))} | {_fmt(lf.get('constant_nll'))} | AUC {_fmt(lf.get('heldout_auc'), '.3f')} |",
        f"| return | {_fmt(rf.get('heldout_nll'))} | {_fmt(rf.get('constant_nll'))} | "
        f"{rf.get('n_train', '–')} train / {rf.get('n_test', '–')} test sessions |",
        "",
        "## Simulated vs real",
        "",
        "| distance | value |",
        "| --- | ---: |",
        f"| TV return day (raw) | {_fmt(c['tv_return_day'])} |",
        f"| TV return day (censoring-matched) | {_fmt(c['tv_return_day_censored'])} |",
        f"| TV session length (exposures; floor {_fmt(c['real_share_shorter_than_slate'], '.3f')}: real sessions "
        f"shorter than the slate of {c['slate_size']}) | {_fmt(c['tv_session_length'])} |",
        f"| TV session length (requests of {c['slate_size']}) | {_fmt(c['tv_session_requests'])} |",
        "",
        "### Return day (share of sessions with an observed return)",
        "",
        "Real gaps are right-censored by the log window; *censored* keeps a simulated day d only if d <= c, with c "
        f"drawn from the real sessions' observation windows ({_fmt(c['return_day']['observed_share_sim'], '.1%')} "
        "of simulated returns kept).",
        "",
        "| day | real | sim (raw) | sim (censored) |",
        "| --- | ---: | ---: | ---: |",
    ]
    rd = c["return_day"]
    D = c["max_return_day"]
    for d, (r, s, sc) in enumerate(zip(_shares(rd["real"]), _shares(rd["sim"]), _shares(rd["sim_censored"])), 1):
        lines.append(f"| {d}{'+' if d == D else ''} | {_fmt(r, '.3f')} | {_fmt(s, '.3f')} | {_fmt(sc, '.3f')} |")
    mr = c["mean_return_day"]
    lines += [
        f"| mean | {_fmt(mr['real'], '.3f')} | {_fmt(mr['sim'], '.3f')} | {_fmt(mr['sim_censored'], '.3f')} |",
        "",
        "### Session length (exposures per session)",
        "",
        "| length | real | sim |",
        "| --- | ---: | ---: |",
    ]
    sl = c["session_length"]
    L = len(sl["real"])
    for k, (r, s) in enumerate(zip(_shares(sl["real"]), _shares(sl["sim"])), 1):
        lines.append(f"| {k}{'+' if k == L else ''} | {_fmt(r, '.3f')} | {_fmt(s, '.3f')} |")
    ms = c["mean_session_length"]
    lines += [
        f"| mean | {_fmt(ms['real'], '.2f')} | {_fmt(ms['sim'], '.2f')} |",
        "",
        "### Behaviour rates (per exposure)",
        "",
        "| behaviour | real | sim | abs diff |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b, v in c["behaviour_rates"].items():
        lines.append(f"| {b} | {_fmt(v['real'])} | {_fmt(v['sim'])} | {_fmt(v['abs_diff'])} |")
    lines += ["", "Plots: `return_day.png`, `session_length.png`, `behaviour_rates.png`.", ""]
    return "\n".join(lines)


def _bars(path: Path, labels: list[str], series: dict[str, list[float]], title: str, ylabel: str,
          log_y: bool = False) -> None:
    """Grouped bar chart, saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless; harmless if already selected
    import matplotlib.pyplot as plt

    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.45 * len(labels) * len(series))), 3.8))
    try:
        for j, (name, vals) in enumerate(series.items()):
            ax.bar(x + (j - (len(series) - 1) / 2) * width, np.nan_to_num(np.asarray(vals, float)), width, label=name)
        ax.set_xticks(x, labels)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")  # behaviour rates span ~4 orders of magnitude
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)  # the temp name has no .png suffix: give the format
    finally:
        plt.close(fig)


def calibration_report(
    sim, out_dir: str | Path, preset: str = "learned", n_users: int = 512, seed: int = 0, n_steps: int | None = 200,
    slate_size: int | None = None, n_sessions: int | None = None, popularity: Tensor | None = None,
    log: Callable[[str], None] | None = None, **env_overrides: Any,
) -> dict[str, Any]:
    """Simulate with the logged-like policy and write ``calibration.md``, ``calibration.json`` and the plots
    ``return_day.png``, ``session_length.png``, ``behaviour_rates.png`` to ``out_dir`` (each atomically).

    ``sim`` is a :class:`Simulator` or a bundle path. Sessions are admitted as in :func:`simulate_logged_like`
    (``n_sessions``, when given, replaces ``n_steps``); ``slate_size`` None is the preset's (6, as in the
    benchmarks), and the report states the slate it ran. Returns the JSON dict (keys include ``tv_return_day``,
    ``tv_return_day_censored``, ``tv_session_length``).
    """
    if isinstance(sim, (str, Path)):
        from retentionrl.simulator.bundle import Simulator

        sim = Simulator.load(sim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = ("argument" if popularity is not None
              else "bundle item_exposures" if sim.tensors.get("item_exposures") is not None else "uniform (none stored)")
    if n_sessions is not None:
        n_steps = None
    stats = simulate_logged_like(sim, preset, n_users=n_users, n_steps=n_steps, seed=seed, slate_size=slate_size,
                                 n_sessions=n_sessions, popularity=popularity, **env_overrides)
    comp = compare(sim, stats, seed=seed)
    m = sim.meta
    res: dict[str, Any] = {
        "dataset": m.get("dataset"), "preset": preset, "slate_size": stats.slate_size, "n_users": n_users, "n_steps": n_steps,
        "n_sessions": n_sessions, "seed": seed,
        "popularity_source": source,
        "auc": m.get("auc"), "leave_fit": m.get("leave_fit"), "return_fit": m.get("return_fit"),
        "comparison": comp,
        "tv_return_day": comp["tv_return_day"],
        "tv_return_day_censored": comp["tv_return_day_censored"],
        "tv_session_length": comp["tv_session_length"],
        "tv_session_requests": comp["tv_session_requests"],
    }
    D = comp["max_return_day"]
    rd = comp["return_day"]
    _bars(out / "return_day.png", [str(d) for d in range(1, D)] + [f"{D}+"],
          {"real": _shares(rd["real"]), "sim (raw)": _shares(rd["sim"]), "sim (censored)": _shares(rd["sim_censored"])},
          f"Return day — {preset}, slate {stats.slate_size}", "share of sessions")
    sl = comp["session_length"]
    L = len(sl["real"])
    _bars(out / "session_length.png", [str(k) for k in range(1, L)] + [f"{L}+"],
          {"real": _shares(sl["real"]), "sim": _shares(sl["sim"])}, f"Session length (exposures) — {preset}, slate {stats.slate_size}",
          "share of sessions")
    br = comp["behaviour_rates"]
    _bars(out / "behaviour_rates.png", list(br),
          {"real": [v["real"] if v["real"] is not None else float("nan") for v in br.values()],
           "sim": [v["sim"] for v in br.values()]}, f"Behaviour rates — {preset}", "rate per exposure (log)", log_y=True)
    write_json_atomic(out / "calibration.json", res)
    write_text_atomic(out / "calibration.md", _markdown(sim, res))
    if log is not None:
        log(f"[calibration] {preset} at slate {stats.slate_size}: TV return day {_fmt(res['tv_return_day'], '.3f')} "
            f"(censored {_fmt(res['tv_return_day_censored'], '.3f')}), session length {_fmt(res['tv_session_length'], '.3f')}")
    return res
