"""Localisation score of any interpreter: top-k IoU of its maps with ground-truth object masks.

k is the object's own area (:func:`adv2core.metrics.localization_iou`), so the score asks "are the
object-sized most salient pixels the object?" for the true class, and, as a control, for a random wrong
class: a class-sensitive interpreter scores clearly lower there. It is the baseline of the attack reports
(an ADV^2 map should localise as well as the benign one) and RTS's quality bar.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm


def wrong_classes(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random class other than the label, per sample (seeded, CPU generator)."""
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(labels),), generator=gen).to(labels.device)
    return (labels + shift) % num_classes


@torch.no_grad()
def localization_scores(
    interpreter: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    gt_masks: torch.Tensor,
    *,
    ids: Sequence[str] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    wrong: bool = True,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-image top-k IoU [N] for the true class (``"true"``) and a random wrong class (``"wrong"``).

    Batches of ``batch_size`` go through ``interpreter.explain`` as they are (MASK optimises each batch
    as one tensor); NaN marks images without an object."""
    from adv2core.metrics import localization_iou

    device = next(interpreter.model.parameters()).device
    wrong_y = wrong_classes(labels, interpreter.model.num_classes, seed)
    out: dict[str, list[torch.Tensor]] = {"true": [], "wrong": []}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"score {type(interpreter).__name__}", disable=not progress, unit="batch"):
        sl = slice(start, start + batch_size)
        x, gt = images[sl].to(device), gt_masks[sl].to(device)
        bid = list(ids[sl]) if ids is not None else [str(i) for i in range(start, start + len(x))]
        for key, cls in (("true", labels[sl]), ("wrong", wrong_y[sl])) if wrong else (("true", labels[sl]),):
            maps = interpreter.explain(x, cls.to(device), ids=bid)
            out[key].append(localization_iou(interpreter.saliency(maps), gt).cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def localization_report(
    interpreter: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    gt_masks: torch.Tensor,
    **kwargs: Any,
) -> dict[str, Any]:
    """Means of :func:`localization_scores`: ``{"n", "iou_true", "iou_wrong"}``."""
    scores = localization_scores(interpreter, images, labels, gt_masks, **kwargs)
    res: dict[str, Any] = {"n": len(images)}
    for key, v in scores.items():
        res[f"iou_{key}"] = float(v.nanmean())
    return res
