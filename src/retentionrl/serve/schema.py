"""The service's request and response bodies (pydantic): what ``POST /v1/rank`` accepts and returns.

Validation names the field of every problem (``candidates.3.scores.click``): a missing field, a wrong type, a NaN
or infinite number, an unknown behaviour, empty candidates, ``k`` larger than the candidates. Sizes over the
service's limits are checked by the service (413), not here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from typing_extensions import TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from retentionrl.data.schema import BEHAVIOURS

# Scores are a ranker's predictions (probabilities in the simulator); the bound keeps every weighted sum finite.
MAX_SCORE = 1e6
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_SCORE, le=MAX_SCORE)]
# (pydantic-core's JSON parser refuses lone surrogates, so every string here encodes as UTF-8 again)
ItemId = Annotated[int | str, Field(union_mode="left_to_right")]
Zero1 = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _per_behaviour(name: str, value: Any) -> type:
    """A TypedDict with one optional key per behaviour (left out: 0) and no other key (an unknown behaviour is an
    error naming it); validated in pydantic-core, without a Python call per candidate."""
    td = TypedDict(name, {b: value for b in BEHAVIOURS}, total=False)
    td.__pydantic_config__ = ConfigDict(extra="forbid")
    return td


Scores = _per_behaviour("Scores", Finite)
Behaviours = _per_behaviour("Behaviours", Zero1)
FeatureValue = int | float | str | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class User(_Strict):
    """The user's raw profile values as in the logs (column -> value); a column left out or null is missing, a value
    the training data never had is unseen: both are the cold-start code (categorical) or the median (numeric)."""

    features: dict[str, FeatureValue] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _finite(cls, value: dict[str, FeatureValue]) -> dict[str, FeatureValue]:
        for k, v in value.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                try:
                    x = float(v)
                except OverflowError:
                    x = float("inf")
                if not math.isfinite(x) or abs(x) > 1e15:
                    raise ValueError(f"feature '{k}' is not a finite number of at most 1e15 in size")
        return value


class HistoryItem(_Strict):
    """One past exposure, oldest first: the item, its 0/1 behaviours (left out: 0) and the watch time in seconds."""

    item_id: ItemId
    behaviours: Behaviours = Field(default_factory=dict)
    watch_time: Annotated[float, Field(ge=0.0, le=1e7, allow_inf_nan=False)] = 0.0


class Candidate(_Strict):
    """A ranking-stage candidate with its predicted score per behaviour (left out: 0)."""

    item_id: ItemId
    scores: Scores


ScoreColumn = Annotated[list[Finite], Field(min_length=1)]


ScoreColumns = _per_behaviour("ScoreColumns", ScoreColumn)


class CandidateColumns(_Strict):
    """The candidates in columns, as a ranking stage holds them: the ids, and one list of scores per behaviour
    (left out: 0), each as long as the ids. A quarter of the bytes of the per-candidate form, and faster to read."""

    item_ids: Annotated[list[ItemId], Field(min_length=1)]
    scores: ScoreColumns

    @model_validator(mode="after")
    def _lengths(self) -> "CandidateColumns":
        for b, col in self.scores.items():
            if len(col) != len(self.item_ids):
                raise ValueError(f"scores.{b} has {len(col)} values for {len(self.item_ids)} item_ids")
        return self


class Context(_Strict):
    """Where the request sits in the user's sessions (the cross-session state a retention policy reads)."""

    session_index: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # sessions the user completed before this one
    step_in_session: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # requests already made in this session
    days_since_last: Annotated[float, Field(ge=0.0, le=36_500.0, allow_inf_nan=False)] = 0.0  # gap before it (days)


class RankRequest(_Strict):
    """``candidates`` (one object per candidate) or ``candidate_columns`` (ids and score lists), exactly one."""

    user: User = Field(default_factory=User)
    history: list[HistoryItem] = Field(default_factory=list)
    candidates: Annotated[list[Candidate], Field(min_length=1)] | None = None
    candidate_columns: CandidateColumns | None = None
    k: Annotated[int, Field(ge=1)]
    context: Context = Field(default_factory=Context)

    @field_validator("k")
    @classmethod
    def _k_fits(cls, k: int, info: ValidationInfo) -> int:
        cands, cols = info.data.get("candidates"), info.data.get("candidate_columns")  # None when they failed
        n = len(cands) if cands is not None else len(cols.item_ids) if cols is not None else None
        if n is not None and k > n:
            raise ValueError(f"k ({k}) is larger than the number of candidates ({n})")
        return k

    @model_validator(mode="after")
    def _one_form(self) -> "RankRequest":
        if (self.candidates is None) == (self.candidate_columns is None):
            raise ValueError("give the candidates either as 'candidates' or as 'candidate_columns', exactly one")
        return self

    @property
    def n_candidates(self) -> int:
        return len(self.candidates) if self.candidates is not None else len(self.candidate_columns.item_ids)

    def item_ids(self) -> list:
        """The candidates' ids, in request order."""
        return [c.item_id for c in self.candidates] if self.candidates is not None else self.candidate_columns.item_ids

    def score_matrix(self, behaviours: tuple[str, ...]) -> np.ndarray:
        """(C, len(behaviours)) float32: the candidates' scores, 0 where a behaviour is left out."""
        C = self.n_candidates
        if self.candidates is not None:
            return np.fromiter((c.scores.get(x, 0.0) for c in self.candidates for x in behaviours), dtype=np.float32,
                               count=C * len(behaviours)).reshape(C, len(behaviours))
        cols = self.candidate_columns.scores
        out = np.zeros((C, len(behaviours)), dtype=np.float32)
        for j, b in enumerate(behaviours):
            if b in cols:
                out[:, j] = cols[b]
        return out


class RankedItem(BaseModel):
    item_id: ItemId
    score: float | None  # None: an item-level policy's cold-start item (ranked after the known ones)


class RankResponse(BaseModel):
    items: list[RankedItem]
    fusion_weights: dict[str, float | None] | None  # the weights applied (fusion policies), None for item-level ones
    artifact_version: str
    cold_start: dict[str, Any]  # what was unknown: history items dropped, candidates, user feature values
