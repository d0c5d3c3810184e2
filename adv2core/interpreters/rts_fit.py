"""Training the RTS masking model with the pytorch-saliency recipe (spec section 2.3), cached per classifier.

Phase 1 trains the class selector only: cross-entropy of the "exists" logits against "is the selected
class the true label" (fake labels with probability ``phase1_fake_prob``). Phase 2 trains the decoder
(encoder frozen; the selector too unless ``phase2_train_selector``: pytorch-saliency's
``get_trainable_parameters`` excludes it, the spec's prose includes it) with

    destroyer + 8 * area + 0.005 * smoothness + 0.3 * preserver                (paper weights)

where, exactly as pytorch-saliency's ``SaliencyLoss`` (all CW terms are w.r.t. the TRUE label y, while
the mask is computed for the selected class c, fake with probability ``phase2_fake_prob``):

* destroyer = CW on the black box of the image with the mask region replaced by an alternative image:
  real c: non-targeted (y must lose by ``destroyer_confidence``); fake c: targeted (y must still win by
  1) -- so a fake class must not remove the object, i.e. its mask is empty;
* preserver = CW on the image with everything *outside* the mask replaced: real c: targeted (y must win
  by ``preserver_confidence``); fake c: non-targeted (y must lose by 1) -- a fake mask preserves nothing;
* area = mean((M + 5e-4)^0.3), smoothness = (sum of squared neighbour differences + 0.3 * sum of squared
  border values) / (2 N), both on the mask bilinearly upsampled to the image.

Alternative images: with probability 0.5 a Gaussian blur of the image, else grey + Gaussian noise + a
random colour per channel; the kept image gets a little noise. Only the black-box classifier and the
labels are used: the ground-truth object masks are never seen in training (they only score the result).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adv2core.interpreters.config import RTSConfig
from adv2core.interpreters.mask import fast_layout, gaussian_blur
from adv2core.interpreters.rts_model import MaskingModel
from adv2core.models.classifier import Classifier


# ------------------------------------------------------------------------------------------------
# Loss pieces
# ------------------------------------------------------------------------------------------------
def cw_loss(logits: torch.Tensor, label: torch.Tensor, targeted: torch.Tensor, t_conf: float, nt_conf: float) -> torch.Tensor:
    """Mean CW margin loss: targeted rows want label ahead by ``t_conf``, the others behind by ``nt_conf``."""
    this = logits.gather(1, label[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    t = F.relu(other - this + t_conf)
    nt = F.relu(this - other + nt_conf)
    return torch.where(targeted, t, nt).mean()


def area_loss(mask: torch.Tensor, power: float) -> torch.Tensor:
    return (mask + 5e-4).pow(power).mean()


def smoothness_loss(mask: torch.Tensor, power: float = 2.0, border_penalty: float = 0.3) -> torch.Tensor:
    """pytorch-saliency's smoothness: squared neighbour differences plus a border term, per image."""
    dy = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).abs().pow(power).sum()
    dx = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs().pow(power).sum()
    border = (
        mask[:, :, 0, :].pow(power).sum() + mask[:, :, -1, :].pow(power).sum()
        + mask[:, :, :, 0].pow(power).sum() + mask[:, :, :, -1].pow(power).sum()
    )
    return (dy + dx + border_penalty * border) / (power * mask.shape[0])


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(like)


def _rand(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen).to(like)


def apply_mask(x: torch.Tensor, keep: torch.Tensor, x_blur: torch.Tensor, cfg: RTSConfig, gen: torch.Generator) -> torch.Tensor:
    """x * keep + alt * (1 - keep) with a fresh alternative image per sample (images never get gradient)."""
    n, c = x.shape[:2]
    scale = 1.0 / cfg.image_domain_scale
    x = x + _randn(x.shape, gen, x) * (cfg.preserved_noise_std * scale)
    alt = 0.5 + _randn(x.shape, gen, x) * (cfg.alt_noise_std * scale)
    alt = alt + (_rand((n, c, 1, 1), gen, x) - 0.5) * (cfg.alt_color_range * scale)
    use_blur = _rand((n, 1, 1, 1), gen, x) < cfg.alt_blur_prob
    alt = torch.where(use_blur, x_blur, alt)
    return x.detach() * keep + alt.detach() * (1.0 - keep)


def _autocast(mode: str, device: torch.device):
    """bfloat16 autocast for the black-box passes of training (see ``RTSConfig.black_box_autocast``)."""
    if mode == "auto":
        if device.type == "cuda":
            mode = "bf16"
        else:
            mode = "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def saliency_loss(
    classifier: Classifier, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, is_real: torch.Tensor,
    cfg: RTSConfig, gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pytorch-saliency's SaliencyLoss (see the module docstring); ``mask`` at native resolution."""
    s = x.shape[-1]
    big = F.interpolate(mask, size=(s, s), mode="bilinear", align_corners=False)
    x_blur = gaussian_blur(x, cfg.alt_blur_kernel, cfg.alt_blur_sigma) if cfg.alt_blur_prob > 0 else x
    destroyed = apply_mask(x, 1.0 - big, x_blur, cfg, gen)
    preserved = apply_mask(x, big, x_blur, cfg, gen)
    with _autocast(cfg.black_box_autocast, x.device):
        logits = classifier(fast_layout(torch.cat([destroyed, preserved])))
    logits_d, logits_p = logits.float().chunk(2)
    terms = {
        "destroyer": cw_loss(logits_d, y, ~is_real, 1.0, cfg.destroyer_confidence),
        "preserver": cw_loss(logits_p, y, is_real, cfg.preserver_confidence, 1.0),
        "area": area_loss(big, cfg.area_power),
        "smoothness": smoothness_loss(big, cfg.smoothness_power, cfg.border_penalty),
    }
    total = (
        cfg.destroyer_coeff * terms["destroyer"] + cfg.area_coeff * terms["area"]
        + cfg.smoothness_coeff * terms["smoothness"] + cfg.preserver_coeff * terms["preserver"]
    )
    return total, terms


# ------------------------------------------------------------------------------------------------
# Data: batched sampling and augmentation
# ------------------------------------------------------------------------------------------------
class _Sampler:
    """Epoch-wise random permutations from a seeded generator (every image once per epoch)."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    def take(self, b: int) -> torch.Tensor:
        out = []
        while b > 0:
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            k = min(b, self.n - self.pos)
            out.append(self.perm[self.pos : self.pos + k])
            self.pos += k
            b -= k
        return torch.cat(out)


def augment(x: torch.Tensor, cfg: RTSConfig, gen: torch.Generator) -> torch.Tensor:
    """Batched RandomSizedCrop (area in [crop_min_area, 1], aspect 3/4..4/3) and horizontal flip."""
    n = x.shape[0]
    if cfg.crop_min_area is not None and cfg.crop_min_area < 1:
        area = cfg.crop_min_area + (1 - cfg.crop_min_area) * torch.rand(n, generator=gen)
        log_r = (torch.rand(n, generator=gen) * 2 - 1) * torch.log(torch.tensor(4.0 / 3.0))
        w = (area * log_r.exp()).sqrt().clamp(max=1.0)
        h = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
        cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def _selected_classes(y: torch.Tensor, k: int, p_fake: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(class per sample, is_real): a uniformly random *other* class with probability ``p_fake``."""
    fake = (torch.rand(len(y), generator=gen) < p_fake).to(y.device)
    shift = torch.randint(1, k, (len(y),), generator=gen).to(y.device)
    c = torch.where(fake, (y + shift) % k, y)
    return c, ~fake


# ------------------------------------------------------------------------------------------------
# The two phases
# ------------------------------------------------------------------------------------------------
class _Batches:
    """Training batches (images, labels, encoder features) for both phases.

    The encoder is frozen, so with flip-only augmentation its features are computed once per image and
    once per flipped image (stored as float16) and then only indexed: phase 1 becomes almost free and
    phase 2 pays for the black box only. With random crops the encoder runs per batch.
    """

    def __init__(self, masker: MaskingModel, images: torch.Tensor, labels: torch.Tensor, cfg: RTSConfig,
                 gen: torch.Generator, device: torch.device, chunk: int = 256) -> None:
        self.masker, self.images, self.labels, self.cfg, self.gen, self.device = masker, images, labels, cfg, gen, device
        self.sampler = _Sampler(len(images), gen)
        self.cached = cfg.crop_min_area is None or cfg.crop_min_area >= 1
        self.plain: list[torch.Tensor] = []
        self.flipped: list[torch.Tensor] = []
        if self.cached:
            self.plain = self._features(False, chunk)
            self.flipped = self._features(True, chunk) if cfg.hflip else self.plain

    @torch.no_grad()
    def _features(self, flip: bool, chunk: int) -> list[torch.Tensor]:
        parts: list[list[torch.Tensor]] = []
        for start in range(0, len(self.images), chunk):
            x = self.images[start : start + chunk].to(self.device)
            parts.append([f.half() for f in self.masker.encoder(fast_layout(x.flip(3) if flip else x))])
        return [torch.cat(level).contiguous() for level in zip(*parts)]

    def next(self, b: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        idx = self.sampler.take(b)
        y = self.labels[idx].to(self.device)
        if not self.cached:
            x = augment(self.images[idx], self.cfg, self.gen).to(self.device)
            with torch.no_grad():
                return x, y, self.masker.encoder(fast_layout(x))
        x = self.images[idx].to(self.device)
        idx_d = idx.to(self.device)
        if not self.cfg.hflip:
            return x, y, [f[idx_d].float() for f in self.plain]
        flip = (torch.rand(len(idx), generator=self.gen) < 0.5).to(self.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
        feats = [torch.where(flip, fl[idx_d], pl[idx_d]).float() for pl, fl in zip(self.plain, self.flipped)]
        return x, y, feats


def fit_rts(
    masker: MaskingModel,
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: RTSConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    resume_path: Path | None = None,
    save_every: int = 20,
) -> dict[str, Any]:
    """Run phase 1 and phase 2 on (images [N,3,S,S] in [0,1], labels) in place; returns training metrics.

    ``callback(phase, iterations_done)`` runs after every iteration (progress reporting, learning curves).
    ``resume_path``: every ``save_every`` iterations the whole training state (weights, optimiser, random
    generator, sampler position, running metrics) is written there atomically; a later call with the same
    path continues from it (same result as an uninterrupted run, up to float non-determinism), and the
    file is removed when training ends. The caller keys the path by the recipe, so a changed recipe never
    resumes a stale state.
    """
    device = classifier.mean.device
    gen = torch.Generator().manual_seed(cfg.seed)
    k = masker.num_classes
    classifier.eval().requires_grad_(False)
    masker.requires_grad_(True)
    masker.encoder.requires_grad_(False)
    total = cfg.phase1_iterations + cfg.phase2_iterations
    bar = tqdm(total=total, desc=f"train-rts {classifier.name}", disable=not progress, unit="it")
    metrics: dict[str, Any] = {}
    saved = _load_state(resume_path)

    # Phase 1: selector only (exists-logit cross-entropy on the deepest features).
    t0 = time.perf_counter()
    masker.train()
    batches = _Batches(masker, images, labels, cfg, gen, device)
    metrics["feature_cache_seconds"] = time.perf_counter() - t0
    opt = torch.optim.Adam(masker.selector.parameters(), lr=cfg.phase1_lr, weight_decay=cfg.phase1_weight_decay)
    correct = torch.zeros((), device=device)
    seen = 0
    loss = torch.zeros((), device=device)
    start1 = 0
    if saved is not None:
        masker.load_state_dict(saved["masker"])
        _restore_rng(saved, gen, batches.sampler)
        metrics.update(saved["metrics"])
        if saved["phase"] == 1:
            opt.load_state_dict(saved["opt"])
            start1, correct, seen = saved["it"], saved["acc"][0].to(device), int(saved["acc"][1])
        else:
            start1 = cfg.phase1_iterations
        bar.update(start1)
        for group in opt.param_groups:  # the lr steps already taken
            group["lr"] = cfg.phase1_lr / 10.0 ** (((start1 - 1) // cfg.phase1_lr_step) if cfg.phase1_lr_step and start1 else 0)
    for it in range(start1, cfg.phase1_iterations):
        if cfg.phase1_lr_step and it and it % cfg.phase1_lr_step == 0:
            for group in opt.param_groups:
                group["lr"] /= 10.0
        _, y, feats = batches.next(cfg.phase1_batch_size)
        deepest = feats[-1]
        c, real = _selected_classes(y, k, cfg.phase1_fake_prob, gen)
        logits = masker.exists_logits(masker.selector_act(deepest, c))
        loss = F.cross_entropy(logits, real.long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it >= cfg.phase1_iterations - max(1, cfg.phase1_iterations // 10):  # accuracy over the last 10 %
            correct += (logits.argmax(1) == real.long()).sum()
            seen += len(y)
        bar.update(1)
        if progress and it % 25 == 0:
            bar.set_postfix(phase=1, loss=f"{loss.item():.3f}")
        if callback is not None:
            callback(1, it + 1)
        if resume_path is not None and (it + 1) % save_every == 0:
            _save_state(resume_path, 1, it + 1, masker, opt, gen, batches.sampler, metrics, (correct, seen))
    if saved is None or saved["phase"] == 1:
        metrics["phase1_seconds"] = time.perf_counter() - t0
        metrics["phase1_loss"] = float(loss.detach())
        metrics["phase1_exists_accuracy"] = float(correct) / max(1, seen)

    # Phase 2: decoder (and optionally the selector).
    t0 = time.perf_counter()
    masker.selector.requires_grad_(cfg.phase2_train_selector)
    params = masker.decoder_parameters() + (list(masker.selector.parameters()) if cfg.phase2_train_selector else [])
    opt = torch.optim.Adam(params, lr=cfg.phase2_lr, weight_decay=cfg.phase2_weight_decay)
    sums: dict[str, torch.Tensor] = {}
    n_avg = 0
    start2 = 0
    if saved is not None and saved["phase"] == 2:
        opt.load_state_dict(saved["opt"])
        start2, n_avg = saved["it"], int(saved["acc"][1])
        sums = {k: v.to(device) for k, v in saved["acc"][0].items()}
        bar.update(start2)
        if cfg.phase2_lr_step and start2:
            for group in opt.param_groups:
                group["lr"] = cfg.phase2_lr / 10.0 ** ((start2 - 1) // cfg.phase2_lr_step)
    for it in range(start2, cfg.phase2_iterations):
        if cfg.phase2_lr_step and it and it % cfg.phase2_lr_step == 0:
            for group in opt.param_groups:
                group["lr"] /= 10.0
        x, y, feats = batches.next(cfg.phase2_batch_size)
        c, real = _selected_classes(y, k, cfg.phase2_fake_prob, gen)
        mask, _ = masker.decode(feats, c, 0.0)
        loss, terms = saliency_loss(classifier, x, y, mask, real, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it >= cfg.phase2_iterations - max(1, cfg.phase2_iterations // 10):
            for name, v in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + v.detach()
            n_avg += 1
        bar.update(1)
        if progress and it % 25 == 0:
            bar.set_postfix(phase=2, loss=f"{loss.item():.3f}")
        if callback is not None:
            callback(2, it + 1)
        if resume_path is not None and (it + 1) % save_every == 0 and it + 1 < cfg.phase2_iterations:
            _save_state(resume_path, 2, it + 1, masker, opt, gen, batches.sampler, metrics, (sums, n_avg))
    bar.close()
    if resume_path is not None:
        Path(resume_path).unlink(missing_ok=True)
    masker.selector.requires_grad_(True)
    masker.eval()
    metrics["phase2_seconds"] = time.perf_counter() - t0
    metrics.update({f"phase2_{name}": float(v) / max(1, n_avg) for name, v in sums.items()})
    metrics["train_seconds"] = metrics["phase1_seconds"] + metrics["phase2_seconds"]
    if saved is not None:
        metrics["resumed_from"] = f"phase {saved['phase']} iteration {saved['it']}"
    return metrics


# ------------------------------------------------------------------------------------------------
# Resumable state
# ------------------------------------------------------------------------------------------------
def _save_state(path: Path, phase: int, it: int, masker: MaskingModel, opt: torch.optim.Optimizer,
                gen: torch.Generator, sampler: _Sampler, metrics: dict[str, Any], acc: tuple[Any, int]) -> None:
    """The whole training state after ``it`` iterations of ``phase`` (tensors, numbers, dicts only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"phase": phase, "it": it, "masker": masker.state_dict(), "opt": opt.state_dict(),
             "gen": gen.get_state(), "perm": sampler.perm, "pos": sampler.pos,
             "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "acc": acc}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path | None) -> dict[str, Any] | None:
    """The saved state, or None (no file; an unreadable or torn one is discarded and training restarts)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, pickle.UnpicklingError):
        Path(path).unlink(missing_ok=True)
        return None


def _restore_rng(saved: dict[str, Any], gen: torch.Generator, sampler: _Sampler) -> None:
    gen.set_state(saved["gen"])
    sampler.perm, sampler.pos = saved["perm"], int(saved["pos"])
