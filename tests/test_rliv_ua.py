"""RLIV-UA's LIV networks: Eq. 5/7 target, Eq. 8 decomposition, Eq. 9 tower loss, Eq. 10 sum, hand values."""

from __future__ import annotations

import math

import pytest
import torch

from retentionrl.agents.rliv_ua import GiftAssistance, LIVTower, liv_target, total_loss, tower_loss


def _huber(x: float, delta: float = 1.0) -> float:
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_target_takes_the_twin_minimum_then_the_max_over_the_authors_items():
    # Two rows; the author of row 0 has 3 items, row 1's author 2 (third slot is padding).
    q_next = torch.tensor([[[1.0, 2.0], [4.0, 3.0], [0.5, 0.0]],
                           [[2.0, 5.0], [1.0, 1.5], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    y = liv_target(q_next, torch.tensor([1.0, 0.0]), 0.9, valid)
    # row 0: min per item = 1, 3, 0 -> max 3 -> 1 + 0.9*3; row 1: min = 2, 1 (padding's 9 ignored) -> 0.9*2
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 3.0, 0.9 * 2.0])
    assert liv_target(q_next, torch.zeros(2), 0.9)[1].item() == pytest.approx(0.9 * 9.0)  # without the mask


def test_tower_is_reward_head_plus_discounted_values_and_its_huber_loss():
    torch.manual_seed(0)
    tower = LIVTower(4, [8], auxiliary=True)
    h = torch.randn(3, 4)
    r_hat, q = tower(h, 0.9)
    v = torch.cat([net(h) for net in tower.values], -1)
    assert torch.allclose(q, tower.reward(h) + 0.9 * v)  # Eq. 8, both heads share r̂
    no_aux = LIVTower(4, [8], auxiliary=False)
    r0, q0 = no_aux(h, 0.9)
    assert torch.equal(r0, torch.zeros(3)) and torch.allclose(q0, 0.9 * torch.cat([n(h) for n in no_aux.values], -1))

    # Eq. 9 by hand, one row: r̂ = 0.2, r = 1 (residual 0.8); Q = (0.5, 3.5), y = 1.5 (residuals 1.0, 2.0).
    loss = tower_loss(torch.tensor([0.2]), torch.tensor([[0.5, 3.5]]), torch.tensor([1.0]), torch.tensor([1.5]),
                      delta=1.0, auxiliary=True)
    assert loss.item() == pytest.approx(_huber(0.8) + _huber(1.0) + _huber(2.0))  # 0.32 + 0.5 + 1.5
    no_sl = tower_loss(torch.tensor([0.2]), torch.tensor([[0.5, 3.5]]), torch.tensor([1.0]), torch.tensor([1.5]),
                       delta=1.0, auxiliary=False)
    assert no_sl.item() == pytest.approx(2.0)


def test_total_loss_sums_the_towers_and_adds_the_gift_bce():
    towers = {"click": torch.tensor(0.5), "watch_time": torch.tensor(1.25), "follow": torch.tensor(2.0)}
    assert total_loss(towers).item() == pytest.approx(3.75)
    logit, gift = torch.tensor([0.0, 2.0]), torch.tensor([1, 0])
    bce = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert total_loss(towers, logit, gift).item() == pytest.approx(3.75 + bce)


def test_gift_assistance_learns_a_synthetic_gift_label():
    """KuaiRand has no gift: on a synthetic label (users of group 1 gift authors of group 1) the assistance
    network trained with the BCE of Eq. 10 separates gifting pairs from the others."""
    torch.manual_seed(0)
    n, e = 512, 8
    ug, ag = torch.randint(0, 2, (n,)), torch.randint(0, 2, (n,))
    hu, ha = torch.randn(n, e) * 0.1 + ug[:, None].float(), torch.randn(n, e) * 0.1 + ag[:, None].float()
    gift = (ug == 1) & (ag == 1)
    net = GiftAssistance(e, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        total_loss({}, net(hu, ha), gift).backward()  # no towers: the assistance BCE alone
        opt.step()
    p = torch.sigmoid(net(hu, ha))
    assert p[gift].min() > 0.8 and p[~gift].max() < 0.2
