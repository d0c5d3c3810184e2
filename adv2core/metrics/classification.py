"""Prediction-side metrics on logits ``[N,K]`` (spec section 4: success rate, confidence).

NaN policy: a sample with any NaN logit is *not* a success (``attack_success`` is boolean) and its
confidence / target probability is NaN; other samples are unaffected.
"""

from __future__ import annotations

import torch

from adv2core.metrics._checks import MetricInputError, float_dtype


def _check(logits: torch.Tensor, target: torch.Tensor | None = None) -> None:
    if logits.dim() != 2:
        raise MetricInputError(f"logits must be [N,K], got shape {tuple(logits.shape)}")
    if target is not None and target.shape != (logits.shape[0],):
        raise MetricInputError(f"target must be [N]={logits.shape[0]}, got shape {tuple(target.shape)}")


def attack_success(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """bool[N]: ``argmax logits == target`` (targeted success; NaN rows count as failures)."""
    _check(logits, target)
    finite = ~torch.isnan(logits).any(dim=1)
    return (logits.argmax(dim=1) == target.to(logits.device).long()) & finite


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.to(float_dtype(logits)), dim=1)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """[N]: max softmax probability (= p(c_t) for successful samples; spec 'misclassification confidence')."""
    _check(logits)
    p = _probs(logits)
    # max() would skip NaN on some backends; make NaN rows explicit.
    return torch.where(torch.isnan(p).any(dim=1), torch.nan, p.max(dim=1).values)


def target_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N]: softmax probability of ``target`` (used by GRAD's p_t > 0.8 best-iterate rule)."""
    _check(logits, target)
    p = _probs(logits)
    return p.gather(1, target.to(logits.device).long().view(-1, 1)).squeeze(1)
