"""The training loss: weighted binary cross-entropy, and its focal form."""

from __future__ import annotations

import math

import torch
from torch import nn

from eldefect.losses import FocalBCE

POS_WEIGHT = torch.tensor([1.0, 3.5])


def test_without_focus_it_is_the_weighted_cross_entropy() -> None:
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(8, 2, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    expected = nn.BCEWithLogitsLoss(pos_weight=POS_WEIGHT)(logits, targets)
    assert torch.equal(FocalBCE(POS_WEIGHT, 0.0)(logits, targets), expected)


def test_each_term_is_scaled_by_the_probability_left_to_the_wrong_answer() -> None:
    # One positive of class 1 given p = 0.8, one negative of class 0 given p = 0.2.
    logit = math.log(0.8 / 0.2)
    logits = torch.tensor([[-logit, logit]])
    targets = torch.tensor([[0.0, 1.0]])
    loss = FocalBCE(POS_WEIGHT, 2.0)(logits, targets)
    # Both labels are right at 0.8: each term is its cross-entropy times 0.2^2; the positive
    # carries its class weight 3.5.
    expected = (0.2**2 * -math.log(0.8) + 3.5 * 0.2**2 * -math.log(0.8)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_focus_shifts_the_weight_from_easy_labels_to_hard_ones() -> None:
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])  # both positives
    target, weight = torch.tensor([[1.0]]), torch.tensor([1.0])
    plain, focal = FocalBCE(weight, 0.0), FocalBCE(weight, 2.0)
    plain_ratio = plain(hard, target) / plain(easy, target)
    focal_ratio = focal(hard, target) / focal(easy, target)
    assert focal_ratio > 100 * plain_ratio


def test_a_soft_target_mixes_the_two_terms_and_gradients_flow() -> None:
    logits = torch.zeros(1, 1, requires_grad=True)  # p = 0.5 whatever the target
    loss = FocalBCE(torch.tensor([1.0]), 2.0)(logits, torch.tensor([[1 / 3]]))
    # p_true = 1/3 * 0.5 + 2/3 * 0.5 = 0.5, so the focal factor is 0.25 of the cross-entropy.
    assert math.isclose(loss.item(), 0.25 * math.log(2), rel_tol=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().item() > 0
