"""The before/after benchmarks' worktree helper: bad input is a one-line error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from retentionrl.bench.worktree import add_worktree, remove_worktree
from retentionrl.errors import RetentionRLError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_worktree_of_head_then_an_unknown_commit(tmp_path):
    src = add_worktree(REPO, "HEAD", tmp_path / "head")
    try:
        assert (src / "retentionrl" / "__init__.py").is_file()
        assert add_worktree(REPO, "HEAD", tmp_path / "head") == src  # reused, not checked out twice
    finally:
        remove_worktree(REPO, tmp_path / "head")
    assert not (tmp_path / "head").exists()
    with pytest.raises(RetentionRLError, match=r"^git worktree add in .*: .*"):
        add_worktree(REPO, "no-such-commit-0123", tmp_path / "bad")
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
