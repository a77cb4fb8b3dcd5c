"""Rebuild the KuaiRand-Pure sample shipped in ``src/retentionrl/data/sample/kuairand-pure``.

    python scripts/make_sample.py ../shared/data/kuairand-pure [--users 6000] [--seed 0]

Keeps every raw log row (duplicates included, as in the original) of a seeded random subset of users, the
feature rows of those users, and the feature rows of the videos they were shown. Output is byte-reproducible
(gzip with mtime 0).
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "src" / "retentionrl" / "data" / "sample" / "kuairand-pure"


def write_csv_gz(frame: pd.DataFrame, path: Path) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue().encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path, help="folder with the KuaiRand-Pure log slice and feature files")
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    logs = sorted(args.source.glob("log_standard_*.csv*"))
    log = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in logs], ignore_index=True)
    users = np.sort(pd.unique(log["user_id"].astype(np.int64)))
    rng = np.random.default_rng(args.seed)
    keep = set(rng.choice(users, size=min(args.users, len(users)), replace=False).tolist())
    sample = log[log["user_id"].astype(np.int64).isin(keep)]

    ufeat = pd.read_csv(next(args.source.glob("user_features_pure.csv*")), dtype=str, keep_default_na=False)
    vfeat = pd.read_csv(next(args.source.glob("video_features_basic_pure.csv*")), dtype=str, keep_default_na=False)
    ufeat = ufeat[ufeat["user_id"].astype(np.int64).isin(keep)]
    vfeat = vfeat[vfeat["video_id"].isin(set(sample["video_id"]))]

    OUT.mkdir(parents=True, exist_ok=True)
    write_csv_gz(sample, OUT / "log_standard_4_25_to_5_05_pure_sample.csv.gz")
    write_csv_gz(ufeat, OUT / "user_features_pure.csv.gz")
    write_csv_gz(vfeat, OUT / "video_features_basic_pure.csv.gz")
    print(f"{len(sample)} log rows, {len(ufeat)} users, {len(vfeat)} videos -> {OUT}")


if __name__ == "__main__":
    main()
