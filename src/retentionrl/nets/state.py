"""The agents' state encoder: what a policy knows about a user, from the observation alone.

``s = MLP([profile(u), Transformer([profile(u), h_1..h_H])_last, context])`` where ``context`` is the session
index, the step in the session and the days since the previous session (the cross-session signals a retention
policy needs). Same building blocks as the simulator's response model, separate weights: the agent never sees
the simulator's internal state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import FeatureEncoder, HistoryTransformer, mlp
from retentionrl.simulator.env import Obs

N_CONTEXT = 4


def context_features(obs: Obs, max_sessions: int = 6, max_return_day: int = 10) -> Tensor:
    """(B, 4): session index and step in session (scaled), days since the last session, first-session flag."""
    return torch.stack(
        [
            obs.session_index.float() / max_sessions,
            (obs.step_in_session.float() / 10.0).clamp(max=1.0),
            obs.days_since_last.float() / max_return_day,
            (obs.session_index == 0).float(),
        ],
        dim=1,
    )


class StateEncoder(nn.Module):
    """Obs -> (B, out_dim).

    Args:
        user_cards / n_user_num: the profile's categorical cardinalities and numeric width (from the bundle).
        n_items: item-id embedding table size; dim: token width; window: history length the transformer sees.
    """

    def __init__(self, user_cards: list[int], n_user_num: int, n_items: int, dim: int = 32, window: int = 20,
                 layers: int = 1, out_dim: int = 64) -> None:
        super().__init__()
        self.profile = FeatureEncoder(user_cards, n_user_num, dim)
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.items.weight, std=0.05)
        self.history = HistoryTransformer(dim, 7, window, layers=layers, heads=2, dropout=0.0)
        self.head = nn.Sequential(mlp([2 * dim + N_CONTEXT, 2 * out_dim, out_dim]), nn.ReLU())
        self.out_dim = out_dim

    def forward(self, obs: Obs) -> Tensor:
        user = self.profile(obs.profile_cat, obs.profile_num)  # (B, dim)
        h = self.history(user, self.items(obs.hist_items), obs.hist_resp, obs.hist_pad)  # (B, 1 + H, dim)
        last = torch.where(obs.hist_pad[:, -1:], h[:, 0], h[:, -1])  # empty history: the profile token
        return self.head(torch.cat([user, last, context_features(obs)], dim=1))
