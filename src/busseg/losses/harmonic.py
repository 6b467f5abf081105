"""Harmonic loss (Ning et al., DC-Net, section III-D, Eqs. 19 and 26): a general pixel loss.

    L_h(p_t) = −α_t · (1 + σ)(1 − p_t)^(γ−1) / (σ + (1 − p_t)^γ) · log(p_t)          (Eq. 26)

with ``p_t = p`` where y = 1 and ``1 − p`` where y = 0, ``α_t = α`` where y = 1 and ``1 − α``
where y = 0. Its limits (the paper's P-2, P-3): σ → 0 gives ``−(1 − p_t)^(−1) log p_t`` and
σ → ∞ gives ``−(1 − p_t)^(γ−1) log p_t`` (a focal loss with exponent γ − 1).

Implemented exactly as the equation: there is NO clamp of the per-pixel loss. (The authors'
released code clamps each pixel's loss at 1, which zeroes the gradient of every pixel with
p_t below about 0.75, the hard and low-confidence pixels the loss is designed to emphasise;
see ``shared/notes/reference-findings.md``.)

Numerics: everything is computed from the logit z. With ``z_t = (2y − 1)·z``,
``log(1 − p_t) = logsigmoid(−z_t)`` and ``−log p_t = softplus(−z_t)``; the whole per-pixel loss
is evaluated in log space, ``log(1+σ) + (γ−1)·log(1−p_t) − logaddexp(log σ, γ·log(1−p_t)) +
log(−log p_t)``, then exponentiated, so confident pixels neither underflow nor give 0/0 or ∞·0,
and σ = 0 (the P-2 limit) is exact for any logit.

Choices where the paper is silent: the per-pixel losses are averaged over all pixels of the
batch (``reduction="mean"``; ``"sum"`` and ``"none"`` are also offered); ``alpha=None`` drops
α_t (the paper's "none" setting in Fig. 18); targets are hard labels in {0, 1}.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import register_pixel_loss


def _log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)) without underflow: for x < −20, softplus(x) = eˣ(1 − eˣ/2 + …), so the
    log is x to float precision."""
    safe = torch.log(F.softplus(x.clamp(min=-20.0)))
    return torch.where(x < -20.0, x, safe)


def harmonic_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 5.0,
    sigma: float = 1e-3,
    reduction: str = "mean",
) -> torch.Tensor:
    """Harmonic loss of Eq. 26 from logits (any shape) and a {0, 1} target of the same shape."""
    if logits.shape != target.shape:
        raise ValueError(f"harmonic loss: logits {tuple(logits.shape)} vs target {tuple(target.shape)}")
    target = target.to(logits.dtype)
    signed = logits * (2.0 * target - 1.0)  # logit of p_t
    log_one_minus_pt = F.logsigmoid(-signed)
    log_sigma = math.log(sigma) if sigma > 0 else -math.inf
    log_modulation = (
        math.log1p(sigma)
        + (gamma - 1.0) * log_one_minus_pt
        - torch.logaddexp(torch.full_like(log_one_minus_pt, log_sigma), gamma * log_one_minus_pt)
    )
    loss = torch.exp(log_modulation + _log_softplus(-signed))  # −log p_t = softplus(−z_t)
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"harmonic loss: unknown reduction {reduction!r}")


@register_pixel_loss("harmonic")
class HarmonicLoss(nn.Module):
    """Harmonic loss (DC-Net, Eq. 26) on logits ``[B, 1, H, W]`` and a float {0, 1} target.

    Args:
        alpha: weight α of foreground pixels (1 − α for background); ``None`` drops α_t.
            Paper: 0.25.
        gamma: harmonic exponent γ. Paper: 5.
        sigma: harmonic parameter σ ≥ 0. Paper: 1e-3.
        reduction: ``"mean"`` over all pixels (default), ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 5.0,
        sigma: float = 1e-3,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"harmonic loss: alpha must be in [0, 1] or null, got {alpha}")
        if sigma < 0:
            raise ConfigError(f"harmonic loss: sigma must be ≥ 0, got {sigma}")
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"harmonic loss: reduction must be mean, sum or none, got {reduction!r}")
        self.alpha = alpha
        self.gamma = float(gamma)
        self.sigma = float(sigma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return harmonic_loss(logits, target, self.alpha, self.gamma, self.sigma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, sigma={self.sigma}, reduction={self.reduction}"
