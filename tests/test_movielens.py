"""MovieLens loaders: ML-100K on the shared files, ML-1M on small files in the real format."""

from __future__ import annotations

import shutil

import pytest

from retentionrl.data import load_dataset, sessionize
from retentionrl.errors import DataError


def test_ml100k_real(shared_data):
    d = load_dataset("ml-100k", shared_data / "ml-100k")
    assert d.n_interactions == 100_000
    assert d.n_users == 943
    assert d.n_items == 1_682
    assert d.behaviours == ("click", "like", "hate")
    assert d.log["click"].all()
    assert d.behaviour_rates()["like"] == pytest.approx(0.55375, abs=1e-12)
    assert (d.log["like"] + d.log["hate"] == 1).all()
    # Toy Story (item 1) is Animation|Children's|Comedy: first genre flag set is Animation (index 3).
    toy = d.dense_item([1])[0]
    assert d.log.loc[d.log["item_id"] == toy, "tag"].iloc[0] == 3


RATINGS_1M = [
    "1::1193::5::978300760",
    "1::661::3::978302109",
    "1::914::4::978301968",
    "2::1193::2::978298413",
    "2::661::4::978385000",  # next UTC day for user 2
    "3::914::1::978297000",
]
USERS_1M = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"]
MOVIES_1M = [
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
    "914::My Fair Lady (1964)::Musical|Romance",
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
    "2000::Caf\u00e9 au lait (1993)::Comedy",  # ISO-8859-1 byte in the real file's encoding
]


@pytest.fixture()
def ml1m_dir(tmp_path):
    for name, lines in (("ratings.dat", RATINGS_1M), ("users.dat", USERS_1M), ("movies.dat", MOVIES_1M)):
        (tmp_path / name).write_bytes(("\n".join(lines) + "\n").encode("ISO-8859-1"))
    return tmp_path


def test_ml1m_small_real_format(ml1m_dir):
    d = load_dataset("ml-1m", ml1m_dir)
    assert d.n_interactions == 6
    assert d.n_users == 3
    assert d.n_items == 3  # movie 2000 is never rated
    assert d.log["like"].sum() == 3  # ratings 5, 4, 4
    assert d.log["hate"].sum() == 3
    assert d.log["click"].all()
    assert set(d.user_features.frame.columns) >= {"gender", "age", "occupation", "zip_region"}
    s = sessionize(d, "day")
    # user 1: one day; user 2: two UTC days (978298413 -> 2000-12-31, 978385000 -> 2001-01-01); user 3: one.
    assert len(s) == 4
    assert s.observed["return_gap"].tolist() == [1.0]


def test_ml1m_shared_user_and_movie_files_parse(shared_data, ml1m_dir):
    """The real users.dat / movies.dat (ISO-8859-1) load with a ratings file in the real format."""
    for name in ("users.dat", "movies.dat"):
        shutil.copy(shared_data / "ml-1m" / name, ml1m_dir / name)
    d = load_dataset("ml-1m", ml1m_dir)
    assert d.n_users == 3
    # First genres of the 3 rated movies (661 Animation, 914 Musical, 1193 Drama) + the missing code.
    assert d.item_features.categorical["tag"] == 4
    assert d.item_features.frame["year"].tolist() == [1996.0, 1964.0, 1975.0]


def test_ml1m_missing_ratings_names_the_file(shared_data):
    with pytest.raises(DataError, match="ratings.dat"):
        load_dataset("ml-1m", shared_data / "ml-1m")


def test_ml1m_malformed_line_names_the_line(ml1m_dir):
    with open(ml1m_dir / "ratings.dat", "a", encoding="ISO-8859-1") as fh:
        fh.write("4::661::5\n")
    with pytest.raises(DataError, match=r"ratings.dat, line 7: expected 4 fields"):
        load_dataset("ml-1m", ml1m_dir)


def test_ml1m_rating_out_of_range(ml1m_dir):
    with open(ml1m_dir / "ratings.dat", "a", encoding="ISO-8859-1") as fh:
        fh.write("3::661::9::978297001\n")
    with pytest.raises(DataError, match=r"column 'rating', line 7"):
        load_dataset("ml-1m", ml1m_dir)
