"""Dataset statistics (``retentionrl data stats``)."""

from __future__ import annotations

from typing import Any

from retentionrl.data.schema import Interactions
from retentionrl.data.sessions import Sessions


def dataset_stats(data: Interactions, sessions: Sessions, max_day: int = 10) -> dict[str, Any]:
    """Everything ``data stats`` prints, as plain JSON-able values."""
    t = sessions.table
    days = data.log["day"]
    return {
        "dataset": data.name,
        "source": {k: v for k, v in data.source.items() if k != "dir"},
        "users": data.n_users,
        "items": data.n_items,
        "interactions": data.n_interactions,
        "density": data.density,
        "days": int(days.max() - days.min() + 1),
        "behaviours": list(data.behaviours),
        "behaviour_rates": data.behaviour_rates(),
        "session_rule": sessions.rule if sessions.rule == "day" else f"gap>{sessions.gap_minutes:g}min",
        "sessions": len(sessions),
        "mean_session_length": float(t["length"].mean()),
        "observed_returns": int((~t["censored"]).sum()),
        "censored_sessions": int(t["censored"].sum()),
        "mean_return_day": float(sessions.observed["return_gap"].mean()) if len(sessions.observed) else None,
        "return_day_histogram": sessions.return_day_distribution(max_day),
    }


def format_stats(s: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`dataset_stats`."""
    src = s["source"]
    lines = [
        f"dataset            {s['dataset']}" + ("  (shipped sample)" if src.get("sample") else ""),
        f"rows read          {src.get('rows_read', s['interactions']):,}"
        + (f"  ({src['duplicates_removed']:,} exact duplicates removed)" if src.get("duplicates_removed") else ""),
        f"interactions       {s['interactions']:,}",
        f"users              {s['users']:,}",
        f"items              {s['items']:,}",
        f"density            {s['density']:.6f}",
        f"days               {s['days']}",
        "behaviour rates    " + "  ".join(f"{b} {r:.4f}" for b, r in s["behaviour_rates"].items()),
        f"sessions           {s['sessions']:,}  (rule: {s['session_rule']})",
        f"mean session len   {s['mean_session_length']:.2f}",
        f"returns observed   {s['observed_returns']:,}  (censored: {s['censored_sessions']:,})",
    ]
    if s["mean_return_day"] is not None:
        lines.append(f"mean return day    {s['mean_return_day']:.3f}")
        lines.append("return-day histogram (share of observed returns)")
        width = 40
        for day, share in s["return_day_histogram"].items():
            lines.append(f"  {day:>4}  {share:6.3f}  {'#' * round(share * width)}")
    return "\n".join(lines)
