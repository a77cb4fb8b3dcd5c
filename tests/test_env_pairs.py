"""The environment's ranking-stage candidates and its user-author pair table (RLIV-UA's state)."""

from __future__ import annotations

import pytest
import torch

from retentionrl.data.schema import BEHAVIOURS, UA_KINDS
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import RetentionEnv, preset
from retentionrl.simulator.synthetic import item_rewards

COLS = [BEHAVIOURS.index(k) for k in UA_KINDS[1:]]


def test_ranked_candidates_are_each_users_top_items_by_predicted_reward(synthetic_sim):
    # The synthetic simulator is state-independent: every user's top 20 are the 20 items of largest reward.
    env = RetentionEnv(synthetic_sim, preset("kuaisim", candidates=20, candidate_source="ranked", n_users=4))
    obs = env.reset(seed=0)
    top = torch.topk(item_rewards(synthetic_sim), 20).indices.sort().values
    assert obs.candidates.shape == (4, 20) and (obs.candidates == top).all()
    out = env.step(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]]).expand(4, 7))
    assert (out.obs.candidates == top).all() and torch.isin(out.slate, top).all()
    with pytest.raises(RetentionRLError, match="needs candidates"):
        RetentionEnv(synthetic_sim, preset("kuaisim", candidate_source="ranked"))


def test_item_scores_over_per_row_candidates_pick_from_each_rows_own_set(synthetic_sim):
    env = RetentionEnv(synthetic_sim, preset("kuaisim", action_mode="items", candidates=10, candidate_source="ranked",
                                             n_users=3, slate_size=2))
    obs = env.reset(seed=0)
    scores = torch.zeros(3, 10)
    scores[:, 7], scores[:, 2] = 2.0, 1.0
    out = env.step(scores)
    assert out.slate.tolist() == [[obs.candidates[b, 7].item(), obs.candidates[b, 2].item()] for b in range(3)]


def test_pair_counts_follow_every_shown_item_and_restart_with_a_fresh_user(synthetic_sim):
    """Recount the pairs by hand from the logged initial history and every slate with its responses."""
    cfg = preset("kuaisim", action_mode="items", candidates=30, ua_counts=True, n_users=4, max_sessions=2)
    env = RetentionEnv(synthetic_sim, cfg)
    obs = env.reset(seed=3)
    author = synthetic_sim.item_author
    A = int(author.max()) + 1
    gen = torch.Generator().manual_seed(0)

    def fresh_table(o, rows):
        t = torch.zeros(len(rows), A, 5)
        for i, b in enumerate(rows):
            for h in range(o.hist_items.shape[1]):
                if not o.hist_pad[b, h]:
                    a = author[o.hist_items[b, h]]
                    t[i, a, 0] += 1
                    t[i, a, 1:] += (o.hist_resp[b, h, COLS] > 0.5).float()
        return t

    table = fresh_table(obs, range(4))
    assert torch.equal(obs.ua_counts, table[:, author[obs.candidates]].view(4, 30, 5))
    ended = 0
    for _ in range(25):
        out = env.step(torch.rand(4, 30, generator=gen))
        for b in range(4):  # the shown items' counts before the slate, then the slate counted
            assert torch.equal(out.slate_ua[b], table[b, author[out.slate[b]]])
            for k in range(out.slate.shape[1]):
                a = author[out.slate[b, k]]
                table[b, a, 0] += 1
                table[b, a, 1:] += out.responses[b, k, COLS]
        assert torch.equal(out.next_obs.ua_counts[0], table[0, author[out.next_obs.candidates]])
        if out.episode_end.any():
            ended += int(out.episode_end.sum())
            rows = torch.nonzero(out.episode_end).squeeze(1).tolist()
            table[rows] = fresh_table(out.obs, rows)
        assert torch.equal(out.obs.ua_counts, table[:, author[out.obs.candidates]])
    assert ended > 0 and table[..., 1].sum() > 0  # fresh users and clicks were exercised


def test_bad_leave_settings_are_one_line_errors_naming_the_key(synthetic_sim):
    with pytest.raises(RetentionRLError, match=r"^env\.leave\.satisfaction_gain needs leave kind 'satisfaction'$"):
        RetentionEnv(synthetic_sim, preset("kuaisim", leave={"satisfaction_gain": 0.5}))
    with pytest.raises(RetentionRLError, match=r"^env\.leave: satisfaction_gain must be >= 0 and max_requests >= 1"):
        RetentionEnv(synthetic_sim, preset("kuaisim", leave={"kind": "satisfaction", "max_requests": 0}))
