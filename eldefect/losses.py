"""The training loss: per-label binary cross-entropy with tempered positive weights, and an
optional focal term for the labels a model already gets right."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalBCE(nn.Module):
    """Binary cross-entropy with logits, positives weighted per class (`pos_weight`), each
    term scaled by (1 - p_t)^gamma, p_t being the probability given to the true label (Lin et
    al., 2017, "Focal Loss for Dense Object Detection").

    With gamma > 0 the confident, correct labels (most negatives, the obvious scratches) weigh
    less and the hard ones (a faint break, a scratch that looks like one) weigh more. gamma 0
    is `nn.BCEWithLogitsLoss(pos_weight=...)` exactly. Targets may be soft (ELPV's expert
    confidence): p_t is then the target-weighted mix of p and 1 - p.
    """

    pos_weight: torch.Tensor

    def __init__(self, pos_weight: torch.Tensor, gamma: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.gamma == 0:
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)
        bce = F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight, reduction="none"
        )
        p = torch.sigmoid(logits)
        p_true = targets * p + (1 - targets) * (1 - p)
        return ((1 - p_true).pow(self.gamma) * bce).mean()
