"""A detached git worktree of another commit, for the benchmarks that measure code "before and after" in one run
(``benchmarks/train_throughput.py --base``, ``benchmarks/speed_equivalence.py --base``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from retentionrl.errors import RetentionRLError


def _git(repo: Path, *args: str) -> None:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise RetentionRLError(f"git {' '.join(args[:2])} in {repo}: {msg[-1] if msg else 'failed'}")


def add_worktree(repo: str | Path, commit: str, path: str | Path) -> Path:
    """Check ``commit`` of the repository ``repo`` out at ``path`` (detached); returns its ``src`` folder, the
    PYTHONPATH that imports that commit's package. Reuses a checkout already at ``path``. A missing git, an unknown
    commit or an occupied path is a one-line :class:`RetentionRLError`."""
    path = Path(path)
    if not (path / "src").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(Path(repo), "worktree", "add", "--detach", "-q", str(path), commit)
    return path / "src"


def remove_worktree(repo: str | Path, path: str | Path) -> None:
    _git(Path(repo), "worktree", "remove", "--force", str(path))
