"""Training the embedded classifiers (deterministic for a seed, CPU-friendly, progress bar)."""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from adv2core.models.classifier import Classifier


class TrainConfig(BaseModel):
    """Hyper-parameters of ``adv2 train`` (part of the checkpoint's cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(8, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    hflip: bool = True
    seed: int = 0
    max_train: int | None = Field(None, gt=0, description="use only the first N training images (tests)")


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
    """SGD + one-cycle cosine schedule; returns ``{test_accuracy, train_seconds, epochs}``."""
    x_train, y_train = train
    if cfg.max_train is not None:
        x_train, y_train = x_train[: cfg.max_train], y_train[: cfg.max_train]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"train {model.name}", disable=not progress, unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.hflip:
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(epoch, float(loss.item()))
    bar.close()
    acc = evaluate_accuracy(model, *test)
    model.eval()
    return {"test_accuracy": acc, "train_seconds": time.perf_counter() - t0, "epochs": cfg.epochs}
