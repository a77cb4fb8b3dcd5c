"""The agents' state encoder: what a policy knows about a user, from the observation alone.

``s = MLP([profile(u), Transformer([profile(u), h_1..h_H])_last, context])`` where ``context`` is the step in
the session, the days since the previous session and a first-session flag (the cross-session signals a retention
policy needs), scaled by the env the agent acts in, plus the episode clock for a time-aware state
(:func:`~retentionrl.nets.actor_critic.time_aware`). Same building blocks as the simulator's response model,
separate weights: the agent never sees the simulator's internal state.

:class:`FlatEncoder` is the parameter-free alternative: the gymnasium adapter's flat observation vector, so that
an agent's networks can be exactly the plain MLPs a gymnasium library (stable-baselines3) puts on that vector.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import FeatureEncoder, HistoryTransformer, mlp
from retentionrl.spaces import STEP_SCALE, FlatLayout, Obs, flat_features

@dataclass(frozen=True)
class ContextScales:
    """How the cross-session context is scaled, from the env the agent acts in
    (:meth:`~retentionrl.nets.actor_critic.AgentSpec.context`): its ``max_sessions``, its ``max_return_day`` D
    (resolved against the bundle) and the step scale. ``clock``: whether the episode clock
    ``session_index / max_sessions`` is a feature."""

    max_sessions: int
    max_return_day: int
    step_scale: float = STEP_SCALE
    clock: bool = False

    @property
    def width(self) -> int:
        """Number of context features."""
        return 4 if self.clock else 3


def context_features(obs: Obs, scales: ContextScales) -> Tensor:
    """(B, scales.width): [session_index / max_sessions (if ``clock``)], step_in_session / step_scale (clipped
    to 1), days_since_last / max_return_day, first-session flag."""
    cols = [
        (obs.step_in_session.float() / scales.step_scale).clamp(max=1.0),
        obs.days_since_last.float() / scales.max_return_day,
        (obs.session_index == 0).float(),
    ]
    if scales.clock:
        cols.insert(0, obs.session_index.float() / scales.max_sessions)
    return torch.stack(cols, dim=1)


class StateEncoder(nn.Module):
    """Obs -> (B, out_dim).

    Args:
        user_cards / n_user_num: the profile's categorical cardinalities and numeric width (from the bundle).
        n_items: item-id embedding table size; dim: token width; window: history length the transformer sees.
        context: the scales of the context features (from the agent's env spec).
    """

    def __init__(self, user_cards: list[int], n_user_num: int, n_items: int, dim: int = 32, window: int = 20,
                 layers: int = 1, out_dim: int = 64, heads: int = 2, *, context: ContextScales) -> None:
        super().__init__()
        self.profile = FeatureEncoder(user_cards, n_user_num, dim)
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.items.weight, std=0.05)
        self.history = HistoryTransformer(dim, 7, window, layers=layers, heads=heads, dropout=0.0)
        self.head = nn.Sequential(mlp([2 * dim + context.width, 2 * out_dim, out_dim]), nn.ReLU())
        self.out_dim, self.context = out_dim, context

    def forward(self, obs: Obs) -> Tensor:
        user = self.profile(obs.profile_cat, obs.profile_num)  # (B, dim)
        last = self.history.last_state(user, self.items(obs.hist_items), obs.hist_resp, obs.hist_pad)  # (B, dim)
        return self.head(torch.cat([user, last, context_features(obs, self.context)], dim=1))


class FlatEncoder(nn.Module):
    """Obs -> (B, out_dim) the gymnasium adapter's flat observation
    (:func:`~retentionrl.spaces.flat_features`; ``out_dim = layout.dim``). No parameters, no gradient:
    a network on top of it is a plain MLP on the vector stable-baselines3 sees."""

    def __init__(self, layout: FlatLayout) -> None:
        super().__init__()
        self.layout = layout
        self.out_dim = layout.dim

    def forward(self, obs: Obs) -> Tensor:
        return flat_features(obs, self.layout)


class ContextDetector(nn.Module):
    """GFN4Retention's context-detecting module: a plain DNN over the whole request context, Obs -> (B, out_dim).

    The transformer summarises the history through its last output, which over-weights recent exposures and
    mixes features only through attention; this module sees every slot at once — the profile, each of the H
    history items (a small embedding) with its 8 response features, flattened, and the session context.
    """

    def __init__(self, user_cards: list[int], n_user_num: int, n_items: int, window: int, dim: int = 16,
                 item_dim: int = 8, hidden: int = 128, out_dim: int = 32, *, context: ContextScales) -> None:
        super().__init__()
        self.profile = FeatureEncoder(user_cards, n_user_num, dim)
        self.items = nn.Embedding(n_items, item_dim)
        nn.init.normal_(self.items.weight, std=0.05)
        self.net = nn.Sequential(mlp([dim + window * (item_dim + 8) + context.width, hidden, out_dim]), nn.ReLU())
        self.context = context

    def forward(self, obs: Obs) -> Tensor:
        items = self.items(obs.hist_items).masked_fill(obs.hist_pad[..., None], 0.0)  # (B, H, item_dim)
        hist = torch.cat([items, obs.hist_resp], 2).flatten(1)  # (B, H * (item_dim + 8))
        return self.net(torch.cat([self.profile(obs.profile_cat, obs.profile_num), hist, context_features(obs, self.context)], 1))


class UserGroups:
    """Route users to groups by a named categorical profile feature (RLUR trains one policy per activity group).

    ``groups`` lists the raw values of each group, e.g. ``[["full_active"], ["high_active"]]``; users with any
    other value (or a missing one) form the last group, so there are ``len(groups) + 1`` groups. With
    ``feature=None`` everyone is in group 0. ``__call__(obs) -> (B,) long`` group index.
    """

    def __init__(self, user_features: dict[str, list], feature: str | None, groups: list[list]) -> None:
        self.column: int | None = None
        self.n = 1
        if feature is None:
            return
        if feature not in user_features:
            known = ", ".join(user_features) or "none: the bundle predates feature names, rebuild it"
            raise RetentionRLError(f"group feature '{feature}' is not a categorical user feature of the simulator (known: {known})")
        vocab = [str(v) for v in user_features[feature]]
        self.column, self.n = list(user_features).index(feature), len(groups) + 1
        self.table = torch.full((len(vocab) + 1,), len(groups), dtype=torch.long)  # code 0 = missing
        for g, values in enumerate(groups):
            for v in values:
                if str(v) not in vocab:
                    raise RetentionRLError(f"group {g}: '{v}' is not a value of user feature '{feature}' (values: {', '.join(vocab)})")
                self.table[vocab.index(str(v)) + 1] = g

    def __call__(self, obs: Obs) -> Tensor:
        if self.column is None:
            return torch.zeros(obs.user.shape[0], dtype=torch.long)
        return self.table[obs.profile_cat[:, self.column]]


class SplitStateEncoder(nn.Module):
    """ResAct's bi-level state: session-level features ``s_h`` and request-level features ``s_l``, encoded apart.

    * ``s_h``: the profile and the cross-session context (days since the previous session / D, the first-session
      flag, and the episode clock for a time-aware state) -> a diagonal Gaussian ``p(z_h | s_h)`` (mean and
      log-std, (B, z_dim) each), so that the conciseness loss ``KL(p(z_h | s_h) || N(0, I))`` is defined;
    * ``s_l``: the exposure history (its own profile token and item embeddings through a history transformer)
      and the step in the session -> ``z_l`` (B, z_dim), deterministic.

    ``forward(obs) -> (mu_h, log_std_h, z_l)``. The two halves share no parameters, so the session-level
    representation is shaped only by what is asked of ``z_h`` (the residual's gradient, expressiveness,
    conciseness)."""

    def __init__(self, user_cards: list[int], n_user_num: int, n_items: int, dim: int = 32, window: int = 20,
                 z_dim: int = 32, hidden: int = 64, heads: int = 2, *, context: ContextScales) -> None:
        super().__init__()
        self.context = context
        n_session = context.width - 1  # every context feature but step_in_session
        self.profile_h = FeatureEncoder(user_cards, n_user_num, dim)
        self.high = mlp([dim + n_session, hidden, 2 * z_dim])
        self.profile_l = FeatureEncoder(user_cards, n_user_num, dim)
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.items.weight, std=0.05)
        self.history = HistoryTransformer(dim, 7, window, layers=1, heads=heads, dropout=0.0)
        self.low = nn.Sequential(mlp([dim + 1, hidden, z_dim]), nn.ReLU())
        self.z_dim = z_dim

    def forward(self, obs: Obs) -> tuple[Tensor, Tensor, Tensor]:
        ctx = context_features(obs, self.context)  # (B, width); step_in_session is the column before the last two
        step = ctx[:, -3:-2]
        session = torch.cat([ctx[:, :-3], ctx[:, -2:]], dim=1)  # [clock], days_since_last, first-session flag
        mu, log_std = self.high(torch.cat([self.profile_h(obs.profile_cat, obs.profile_num), session], 1)).chunk(2, 1)
        user = self.profile_l(obs.profile_cat, obs.profile_num)
        last = self.history.last_state(user, self.items(obs.hist_items), obs.hist_resp, obs.hist_pad)
        return mu, log_std.clamp(-5.0, 2.0), self.low(torch.cat([last, step], 1))


#: the transformer state encoders :func:`compile_encoders` compiles (none contains another)
COMPILED_ENCODERS = (StateEncoder, SplitStateEncoder, ContextDetector)


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend will find (``$CXX``, else g++, clang++ or c++ on PATH), or
    None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def compile_encoders(modules: Iterable[nn.Module]) -> int:
    """``torch.compile`` (inductor: fused C++ kernels on the CPU) every state encoder inside ``modules``, in place
    (``Module.compile``: parameters and state-dict keys are unchanged, so a checkpoint loads either way). The
    encoders are 40–60% of an update and many small kernels; compiled, TD3's act + update is ~20% faster here.
    Same functions up to float rounding (``tests/test_nets.py``), ~30–60 s of compilation at the start (cached in
    inductor's directory for later runs), a C++ compiler needed. Returns how many encoders were compiled."""
    found = [m for root in modules for m in root.modules() if isinstance(m, COMPILED_ENCODERS)]
    for m in found:
        m.compile()
    return len(found)
