"""MovieLens-1M and MovieLens-100K loaders (GroupLens; research use only, never redistributed with this package).

Every rating is an exposure with a click; rating > 3 is a like, otherwise a hate. The item ``tag`` is the first
listed genre. Calendar days are UTC days of the rating time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retentionrl.data.schema import Interactions, build_interactions, calendar_day
from retentionrl.data.tables import numeric_column, read_table
from retentionrl.errors import DataError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
ML1M_GENRES = ML100K_GENRES[1:]
_BEHAVIOURS = ("click", "like", "hate")


def _ratings_to_log(ratings: pd.DataFrame, path: Path, header: bool) -> pd.DataFrame:
    ts = numeric_column(ratings, "timestamp", path, non_negative=True, header=header)
    rating = numeric_column(ratings, "rating", path, header=header)
    bad = ~rating.between(1, 5)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"rating {rating.iloc[i]} is outside 1..5", file=path, column="rating", line=i + 1)
    like = (rating > 3).astype(np.int8)
    return pd.DataFrame(
        {
            "user_id": numeric_column(ratings, "user_id", path, integer=True, header=header),
            "item_id": numeric_column(ratings, "item_id", path, integer=True, header=header),
            "timestamp": ts,
            "day": calendar_day(ts),
            "click": np.ones(len(ratings), dtype=np.int8),
            "like": like,
            "hate": (1 - like).astype(np.int8),
        }
    )


def _first_genre(flags: np.ndarray) -> np.ndarray:
    """(N, G) 0/1 genre flags -> index of the first set flag, -1 when none."""
    has = flags.any(axis=1)
    return np.where(has, flags.argmax(axis=1), -1)


def _require_dir(data_dir: str | Path, name: str, files: tuple[str, ...]) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("data directory not found", file=data_dir)
    for sub in (data_dir, data_dir / name):
        if all((sub / f).is_file() for f in files):
            return sub
    missing = [f for f in files if not (data_dir / f).is_file()]
    hint = " (MovieLens ratings are not redistributable: download them from GroupLens)" if "ratings.dat" in missing or "u.data" in missing else ""
    raise DataError(f"{name}: file '{missing[0]}' not found{hint}", file=data_dir)


def load_ml1m(data_dir: str | Path) -> Interactions:
    """MovieLens-1M: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::`` separated, ISO-8859-1)."""
    folder = _require_dir(data_dir, "ml-1m", ("ratings.dat", "users.dat", "movies.dat"))
    enc = "ISO-8859-1"
    rpath, upath, mpath = folder / "ratings.dat", folder / "users.dat", folder / "movies.dat"
    ratings = read_table(rpath, sep="::", names=("user_id", "item_id", "rating", "timestamp"), encoding=enc)
    users = read_table(upath, sep="::", names=("user_id", "gender", "age", "occupation", "zip"), encoding=enc)
    movies = read_table(mpath, sep="::", names=("item_id", "title", "genres"), encoding=enc)
    log = _ratings_to_log(ratings, rpath, header=False)

    users["user_id"] = numeric_column(users, "user_id", upath, integer=True, header=False)
    users["zip_region"] = users["zip"].str[:1]
    movies["item_id"] = numeric_column(movies, "item_id", mpath, integer=True, header=False)
    flags = np.stack([movies["genres"].str.split("|").apply(lambda gs, g=g: g in gs) for g in ML1M_GENRES], 1)
    movies["tag"] = _first_genre(flags)
    year = pd.to_numeric(movies["title"].str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")
    movies["year"] = year
    for j, g in enumerate(ML1M_GENRES):
        movies[f"genre_{g}"] = flags[:, j].astype(np.int64)
    log["tag"] = log["item_id"].map(movies.set_index("item_id")["tag"]).fillna(-1).astype(np.int64)
    return build_interactions(
        "ml-1m", log, behaviours=_BEHAVIOURS,
        user_features=users, user_categorical=("gender", "age", "occupation", "zip_region"), user_file=upath,
        item_features=movies, item_categorical=("tag", *(f"genre_{g}" for g in ML1M_GENRES)),
        item_numeric=("year",), item_file=mpath, log_file=rpath.name,
        source={"format": "movielens-1m", "dir": str(folder), "rows_read": int(len(ratings)),
                "rows_after_dedup": int(len(log)), "duplicates_removed": 0},
    )


def load_ml100k(data_dir: str | Path) -> Interactions:
    """MovieLens-100K: ``u.data`` (tab separated), ``u.user`` and ``u.item`` (``|`` separated, ISO-8859-1)."""
    folder = _require_dir(data_dir, "ml-100k", ("u.data", "u.user", "u.item"))
    enc = "ISO-8859-1"
    rpath, upath, ipath = folder / "u.data", folder / "u.user", folder / "u.item"
    ratings = read_table(rpath, sep="\t", names=("user_id", "item_id", "rating", "timestamp"), encoding=enc)
    users = read_table(upath, sep="|", names=("user_id", "age", "gender", "occupation", "zip"), encoding=enc)
    item_cols = ("item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES)
    items = read_table(ipath, sep="|", names=item_cols, encoding=enc)
    log = _ratings_to_log(ratings, rpath, header=False)

    users["user_id"] = numeric_column(users, "user_id", upath, integer=True, header=False)
    users["age"] = numeric_column(users, "age", upath, header=False)
    users["zip_region"] = users["zip"].str[:1]
    items["item_id"] = numeric_column(items, "item_id", ipath, integer=True, header=False)
    flags = np.stack([numeric_column(items, g, ipath, header=False).to_numpy() > 0 for g in ML100K_GENRES], 1)
    items["tag"] = _first_genre(flags)
    items["year"] = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    for j, g in enumerate(ML100K_GENRES):
        items[g] = flags[:, j].astype(np.int64)
    log["tag"] = log["item_id"].map(items.set_index("item_id")["tag"]).fillna(-1).astype(np.int64)
    return build_interactions(
        "ml-100k", log, behaviours=_BEHAVIOURS,
        user_features=users, user_categorical=("gender", "occupation", "zip_region"), user_numeric=("age",),
        user_file=upath,
        item_features=items, item_categorical=("tag", *ML100K_GENRES), item_numeric=("year",), item_file=ipath,
        log_file=rpath.name,
        source={"format": "movielens-100k", "dir": str(folder), "rows_read": int(len(ratings)),
                "rows_after_dedup": int(len(log)), "duplicates_removed": 0},
    )
