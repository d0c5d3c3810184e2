"""Training the embedded classifiers (deterministic for a seed, CPU-friendly, progress bar)."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from adv2core.errors import Adv2Error
from adv2core.models.classifier import Classifier


class TrainConfig(BaseModel):
    """Hyper-parameters of ``adv2 train`` (part of the checkpoint's cache key).

    The schedule is anchored on an event, not on a step count: a warm-up, then a constant learning rate
    until the model has learned the task (running mean training loss below ``plateau_loss``), then a
    cosine anneal over ``epochs`` epochs. Why: densenet-mini sits at chance (loss ~ ln 8) for a number of
    steps that depends on floating-point details (seed, thread count, CPU): 150-170 steps here, about 250
    on another machine, up to 290 with one thread. The earlier one-cycle schedule fixed the anneal to step counts, so a late escape
    got too few high-lr steps and the model stopped at 0.52 accuracy. Changing the learning rate, batch
    size, width, stem or initialisation did not remove the plateau (docs/training-robustness.md). Learning
    can also stall on a second plateau (resnet-mini seed 2 left chance at step 60 but confused triangles
    with disks, squares and diamonds: 0.92 train accuracy when the anneal began at loss 1.6), so the
    constant phase lasts until the loss is low (0.35 above the loss floor), not merely below chance.

    Some fields are per model (``None`` = the model's default, :data:`MODEL_DEFAULTS`): densenet-mini is
    trained with label smoothing 0.2, so it does not saturate and every checkpoint is attackable alike; the
    plateau test then measures the loss above the smoothed-target entropy (:func:`smoothed_loss_floor`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(6, gt=0, description="cosine-annealed epochs after the constant-lr phase")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    hflip: bool = True
    label_smoothing: float | None = Field(
        None, ge=0, lt=1, description="None: the model's default (MODEL_DEFAULTS: 0.2 for densenet-mini, else 0)")
    seed: int = 0
    warmup_steps: int = Field(30, ge=0, description="linear warm-up from lr/10")
    plateau_loss: float = Field(0.35, gt=0, description="running mean loss (20 steps) that ends the constant-lr phase")
    max_plateau_epochs: int = Field(20, gt=0, description="fail (nothing cached) if the loss is still above "
                                                            "plateau_loss after this many epochs")
    max_train: int | None = Field(None, gt=0, description="use only the first N training images (tests)")

    def for_model(self, name: str) -> "TrainConfig":
        """This recipe with the fields left to the model (None) filled from :data:`MODEL_DEFAULTS`."""
        update = {k: MODEL_DEFAULTS.get(name, {}).get(k, neutral) for k, neutral in _PER_MODEL.items()
                  if getattr(self, k) is None}
        return self.model_copy(update=update) if update else self

    def recipe(self, name: str) -> dict:
        """The fields that identify ``name``'s checkpoint (cache key, checkpoint metadata). A field added after
        the first checkpoints were published drops out at its neutral value, so those keys and files stay."""
        d = self.for_model(name).model_dump()
        return {k: v for k, v in d.items() if k not in _PER_MODEL or v != _PER_MODEL[k]}


#: Recipe fields that differ by model (applied where a TrainConfig leaves them None). densenet-mini's label
#: smoothing, measured 2026-12-05 on the 2-core AMD EPYC host (quick PGD, eps 16/255, on the first 96 correctly
#: classified test images): without it the model saturates (median benign p(y) 0.995) and the share of
#: targets PGD reaches depended on the checkpoint, 0.81-1.00 by seed and thread count (three of four
#: checkpoints under the 0.9 bar); with 0.1 it was 0.95-0.99 (p(y) ~0.91); with 0.2 it is 0.94-1.00 on seeds
#: 0-4 and 1-2 threads (p(y) ~0.82) at test accuracy 1.0, and ADV²-MASK keeps its shape (L1 ratio 0.52, IoU
#: gain +0.15). benchmarks/training_robustness.py re-measures it (docs/training-robustness-ls-amd.md).
MODEL_DEFAULTS: dict[str, dict] = {"densenet-mini": {"label_smoothing": 0.2}}
#: The per-model fields and their value for a model without a default.
_PER_MODEL = {"label_smoothing": 0.0}


class TrainingStalled(Adv2Error):
    """The classifier never left the chance-level plateau within ``max_plateau_epochs``."""


def smoothed_loss_floor(num_classes: int, label_smoothing: float) -> float:
    """The smallest cross-entropy possible with label smoothing: the entropy of the smoothed target
    (0 without smoothing; 0.467 for 8 classes at 0.1). The plateau test of the schedule adds it to
    ``plateau_loss``, or a smoothed loss could never reach the threshold."""
    if label_smoothing == 0:
        return 0.0
    k = num_classes
    q_true, q_other = 1 - label_smoothing + label_smoothing / k, label_smoothing / k
    return -q_true * math.log(q_true) - (k - 1) * q_other * math.log(q_other)


@torch.no_grad()
def evaluate_accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    for i in range(0, len(images), batch_size):
        correct += (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum()
    return correct.item() / max(1, len(images))


def train_classifier(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict:
    """SGD (Nesterov) with the plateau-anchored schedule of :class:`TrainConfig`.

    Returns ``{test_accuracy, train_seconds, epochs, plateau_steps, steps}``; raises
    :class:`TrainingStalled` when the loss never leaves chance level."""
    x_train, y_train = train
    if cfg.max_train is not None:
        x_train, y_train = x_train[: cfg.max_train], y_train[: cfg.max_train]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    cfg = cfg.for_model(model.name)
    ls = cfg.label_smoothing
    loss_floor = smoothed_loss_floor(model.num_classes, ls)  # the plateau test is relative to it
    steps_per_epoch = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    anneal_steps = cfg.epochs * steps_per_epoch
    max_plateau = cfg.max_plateau_epochs * steps_per_epoch
    t0 = time.perf_counter()
    bar = tqdm(total=anneal_steps, desc=f"train {model.name}", disable=not progress, unit="step")
    recent: list[torch.Tensor] = []
    step, plateau_steps, annealed = 0, None, 0
    epoch = 0
    while annealed < anneal_steps:
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(steps_per_epoch):
            if plateau_steps is None:
                if step < cfg.warmup_steps:
                    lr = cfg.lr * (0.1 + 0.9 * step / cfg.warmup_steps)
                else:
                    lr = cfg.lr
            else:
                lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * annealed / anneal_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.hflip:
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if plateau_steps is None:
                recent = (recent + [loss.detach()])[-20:]
                if step % 10 == 0 and step >= cfg.warmup_steps and len(recent) == 20:
                    if float(torch.stack(recent).mean()) < cfg.plateau_loss + loss_floor:
                        plateau_steps = step
                        bar.set_description(f"train {model.name} (annealing from step {step})")
                    elif step >= max_plateau:
                        bar.close()
                        raise TrainingStalled(
                            f"{model.name} did not learn the task in {step} steps ({cfg.max_plateau_epochs} epochs: "
                            f"loss {float(torch.stack(recent).mean()):.2f}, target {cfg.plateau_loss}); nothing was "
                            f"cached. Try another seed (adv2 train --seed) or raise max_plateau_epochs")
            else:
                annealed += 1
                bar.update(1)
                if annealed >= anneal_steps:
                    break
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(epoch, float(loss.item()))
        epoch += 1
    bar.close()
    acc = evaluate_accuracy(model, *test)
    model.eval()
    return {"test_accuracy": acc, "train_seconds": time.perf_counter() - t0, "epochs": cfg.epochs,
            "plateau_steps": plateau_steps, "steps": step}
