"""MASK v2: meaningful perturbation (Fong & Vedaldi) as the ADV^2 code runs it (spec section 2.4), batched.

One mask m [N,1,S/8,S/8] per image, 1 = keep, 0 = blur (saliency = 1 - m), optimised with Adam for the
whole batch at once. Each iteration:

1. the image, bilinearly upsampled to S + ``upsample_extra`` (228 at 224), and its Gaussian blur
   (21x21, sigma 3.5, reflect padding) are cropped back to S at a per-image jitter offset in
   {0..jitter-1}^2;
2. m is bilinearly upsampled to S and blurred (11x11, sigma 2.0) into M;
3. objective per image = softmax_c(f(x*M + blur(x)*(1-M)) / T) + l1 * sum|1-m| + tv * TV_beta(m), with the
   code's transposed TV (dy paired with dx^T); T = ``temperature`` (paper 1; the quick preset's 4 keeps the
   saturated mini models' maps from going flat);
4. an Adam step (lr 0.1, bias-corrected from a per-image step counter), then m is clamped to [0,1].

Why a hand-written Adam: the ADV^2 attack needs the optimiser state as data (reset, k plain steps, k
unrolled steps with ``create_graph``); one implementation for both paths keeps ``explain`` and the attack's
inner solver identical. It matches ``torch.optim.Adam`` step for step.

Determinism and batch independence: the jitter of image i at draw t is a counter-based hash of
(sha256(id, seed), t), computed on the device for the whole batch at once. Nothing couples images, so a
batch gives the same maps as its images one at a time (up to float rounding of batched convolutions).
``explain`` without ``ids`` uses positional ids ``"0", "1", ...``: pass real ids for maps that do not
depend on the position in the batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from adv2core.interpreters.base import Interpreter
from adv2core.interpreters.config import MaskConfig
from adv2core.models.classifier import Classifier
from adv2core.models.grouped_conv import GroupedConvMode

_M32 = 0xFFFFFFFF


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """channels_last on CPU: oneDNN convolutions of the small models run ~25 % faster (same values up to
    float rounding); other devices keep their layout."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def gaussian_kernel1d(ksize: int, sigma: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian (cv2.getGaussianKernel for an explicit sigma)."""
    r = torch.arange(ksize, device=device, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(r * r) / (2 * sigma * sigma))
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, ksize: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflect padding, separable (two 1-D passes equal the 2-D kernel)."""
    if ksize == 1:
        return x
    n, c, h, w = x.shape
    p = ksize // 2
    k = gaussian_kernel1d(ksize, sigma, device=x.device, dtype=x.dtype)
    xp = F.pad(x, [p, p, p, p], mode="reflect")
    xp = F.conv2d(xp, k.view(1, 1, 1, ksize).expand(c, 1, 1, ksize), groups=c)
    return F.conv2d(xp, k.view(1, 1, ksize, 1).expand(c, 1, ksize, 1), groups=c)


def tv_norm(m: torch.Tensor, beta: float, transposed: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """[N]: sum (dy^2 + dx^2 + eps)^(beta/2). ``transposed`` reproduces the code: dx is transposed so that
    its [h, w-1] grid lines up with dy's [h-1, w] (only defined for square masks)."""
    dy = m[:, :, 1:, :] - m[:, :, :-1, :]
    dx = m[:, :, :, 1:] - m[:, :, :, :-1]
    if transposed:
        return (dy.pow(2) + dx.transpose(2, 3).pow(2) + eps).pow(beta / 2).flatten(1).sum(1)
    # Aligned variant: both differences on the common (h-1) x (w-1) grid.
    return (dy[..., :-1].pow(2) + dx[..., :-1, :].pow(2) + eps).pow(beta / 2).flatten(1).sum(1)


def image_keys(ids: Sequence[str], seed: int, device: torch.device | str) -> torch.Tensor:
    """int64 [N]: a 32-bit key per image from sha256(id, seed) (host side, once per call)."""
    keys = [int.from_bytes(hashlib.sha256(f"{i}\x00{seed}".encode()).digest()[:4], "little") for i in ids]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 tensors (products stay below 2^59: no overflow on any device)."""
    x = x & _M32
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x045D9F3B) & _M32
    return x ^ (x >> 16)


def jitter_offsets(keys: torch.Tensor, start: int, count: int, jitter: int) -> torch.Tensor:
    """int64 [count, N, 2]: crop offsets (row, col) for draws start..start+count-1 of every image."""
    t = torch.arange(start, start + count, device=keys.device, dtype=torch.int64).view(-1, 1, 1)
    axis = torch.arange(2, device=keys.device, dtype=torch.int64).view(1, 1, 2)
    mixed = keys.view(1, -1, 1) ^ ((t * 0x9E3779B1 + axis * 0x85EBCA6B + 0x632BE5AB) & _M32)
    return _hash32(mixed) % jitter


@dataclass
class MaskState:
    """The inner optimiser's state for a batch: mask, Adam moments, per-image step count, jitter stream."""

    m: torch.Tensor  # [N,1,h,w] in [0,1]
    exp_avg: torch.Tensor  # [N,1,h,w]
    exp_avg_sq: torch.Tensor  # [N,1,h,w]
    step: torch.Tensor  # [N] float, Adam's bias-correction counter
    keys: torch.Tensor  # [N] int64 jitter keys (from the image ids)
    draws: int = 0  # jitter draws consumed so far (the same for every image of the batch)

    def detach(self) -> "MaskState":
        return replace(self, m=self.m.detach(), exp_avg=self.exp_avg.detach(), exp_avg_sq=self.exp_avg_sq.detach())


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf*0 = NaN) where v == 0: Adam's second moment under create_graph."""
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


class MASK(Interpreter):
    """Batched MASK v2. ``map_size = S / mask_divisor``; maps are m (1 keeps), saliency is 1 - m."""

    name = "mask"
    iterative = True

    def __init__(self, model: Classifier, cfg: MaskConfig) -> None:
        """``cfg``: the solver settings (an interpreter preset's ``mask`` section; see
        :func:`adv2core.interpreters.registry.interpreter_spec`)."""
        super().__init__(model)
        self.cfg: MaskConfig = cfg

    def map_size(self, input_size: int | None = None) -> int:
        return (input_size or self.model.input_size) // self.cfg.mask_divisor

    def saliency(self, maps: torch.Tensor) -> torch.Tensor:
        return 1.0 - maps

    # -- the objective -----------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[N,6,S+e,S+e]: the upsampled image and its blur, stacked for one batched crop per step."""
        s = x.shape[-1]
        xu = F.interpolate(x, size=(s + self.cfg.upsample_extra,) * 2, mode="bilinear", align_corners=False)
        return torch.cat([xu, gaussian_blur(xu, self.cfg.blur_kernel, self.cfg.image_sigma)], dim=1)

    @staticmethod
    def _crop(z: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
        """Per-image crops of side ``size`` at ``offsets`` [N,2] via index tensors (no per-image loop)."""
        n, c, hh, ww = z.shape
        ar = torch.arange(size, device=z.device)
        rows = (offsets[:, 0:1] + ar).view(n, 1, size, 1).expand(n, c, size, ww)
        z = z.gather(2, rows)
        cols = (offsets[:, 1:2] + ar).view(n, 1, 1, size).expand(n, c, size, size)
        return z.gather(3, cols)

    def _objective(self, z: torch.Tensor, m: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
        zc = self._crop(z, offsets, size)
        x, xb = zc[:, :3], zc[:, 3:]
        big = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
        big = gaussian_blur(big, self.cfg.mask_blur_kernel, self.cfg.mask_sigma)
        composite = x * big + xb * (1.0 - big)
        logits = self.model(fast_layout(composite))
        if self.cfg.temperature != 1.0:
            logits = logits / self.cfg.temperature
        prob = F.softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
        l1 = (1.0 - m).abs().flatten(1).sum(1)
        tv = tv_norm(m, self.cfg.tv_beta, self.cfg.tv_transposed)
        return prob + self.cfg.l1_coeff * l1 + self.cfg.tv_coeff * tv

    def objective(self, x: torch.Tensor, m: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """[N]: the MASK objective of masks ``m`` for images ``x``; ``offsets`` [N,2] (default: no shift)."""
        if offsets is None:
            offsets = torch.zeros(x.shape[0], 2, dtype=torch.long, device=x.device)
        return self._objective(self.prepare(x), m, target, offsets, x.shape[-1])

    # -- optimiser state -----------------------------------------------------------------------------
    def init_state(
        self, x: torch.Tensor, target: torch.Tensor, ids: Sequence[str] | None = None, m0: torch.Tensor | None = None
    ) -> MaskState:
        """Fresh state: m = m0 (default ``init`` = 0.5 everywhere), zero moments, step 0."""
        n, side = x.shape[0], self.map_size(x.shape[-1])
        if ids is None:
            ids = [str(i) for i in range(n)]
        if len(ids) != n:
            raise ValueError(f"MASK: {len(ids)} ids for {n} images")
        if m0 is None:
            m = torch.full((n, 1, side, side), self.cfg.init, device=x.device, dtype=x.dtype)
        else:
            m = m0.detach().to(device=x.device, dtype=x.dtype).clone()
        zeros = torch.zeros_like(m)
        step = torch.zeros(n, device=x.device, dtype=x.dtype)
        return MaskState(m, zeros, zeros.clone(), step, image_keys(ids, self.cfg.seed, x.device))

    def reset_state(self, state: MaskState, m_new: torch.Tensor) -> MaskState:
        """Restart the inner solver from ``m_new`` keeping damped moments (spec 2.4 stage 2 step 1)."""
        c = self.cfg
        return replace(
            state,
            m=m_new.detach().to(state.m).clone(),
            exp_avg=state.exp_avg.detach() * c.reset_exp_avg_scale,
            exp_avg_sq=state.exp_avg_sq.detach() * c.reset_exp_avg_sq_scale,
            step=torch.full_like(state.step, float(c.reset_step)),
        )

    def _adam(self, m, g, exp_avg, exp_avg_sq, step):
        c = self.cfg
        step = step + 1
        exp_avg = c.beta1 * exp_avg + (1 - c.beta1) * g
        exp_avg_sq = c.beta2 * exp_avg_sq + (1 - c.beta2) * g * g
        # Bias corrections in float64, as torch.optim.Adam computes them (Python floats): in float32,
        # beta2 = 0.999 rounds to 0.99900001, so 1 - beta2^t is 1.3e-5 too small at t = 1 and every step
        # came out ~6e-6 (relative) short of torch's -- 3.9e-6 on m after 5 steps on identical gradients.
        t = step.to(torch.float64)
        step_size = (c.lr / (1 - c.beta1**t)).to(m.dtype).view(-1, 1, 1, 1)
        bc2_sqrt = (1 - c.beta2**t).sqrt().to(m.dtype).view(-1, 1, 1, 1)
        denom = _safe_sqrt(exp_avg_sq) / bc2_sqrt + c.eps
        m = (m - step_size * exp_avg / denom).clamp(0.0, 1.0)
        return m, exp_avg, exp_avg_sq, step

    def plain_steps(
        self, x: torch.Tensor, target: torch.Tensor, state: MaskState, k: int, z: torch.Tensor | None = None
    ) -> MaskState:
        """k Adam steps on m for fixed ``x`` (no graph to ``x``); a new jitter per step. ``z``:
        :meth:`prepare` of ``x`` when the caller has it already (an attack step shares one)."""
        size = x.shape[-1]
        if z is None:
            with torch.no_grad():
                z = self.prepare(x.detach())
        z = z.detach()
        offs = jitter_offsets(state.keys, state.draws, k, self.cfg.jitter)
        m, ea, eas, step = state.m.detach(), state.exp_avg.detach(), state.exp_avg_sq.detach(), state.step
        with torch.enable_grad():
            for i in range(k):
                m = m.detach().requires_grad_(True)
                obj = self._objective(z, m, target, offs[i], size)
                (g,) = torch.autograd.grad(obj.sum(), m)
                with torch.no_grad():
                    m, ea, eas, step = self._adam(m, g, ea, eas, step)
        return replace(state, m=m.detach(), exp_avg=ea, exp_avg_sq=eas, step=step, draws=state.draws + k)

    def unrolled_steps(
        self, x: torch.Tensor, target: torch.Tensor, state: MaskState, k: int, target_map: torch.Tensor,
        z: torch.Tensor | None = None,
    ) -> tuple[MaskState, torch.Tensor]:
        """k Adam steps built with ``create_graph``: returns (detached new state, loss [N] with graph to x).

        loss = mean over the k steps of sum_cells (m_j - target_map)^2. m is detached between steps, the
        moment buffers are not (within this call), as in the official attack (spec 2.4 stage 2 step 4).
        """
        size = x.shape[-1]
        z = self.prepare(x) if z is None else z  # z: prepare(x) with its graph to x
        offs = jitter_offsets(state.keys, state.draws, k, self.cfg.jitter)
        m, ea, eas, step = state.m.detach(), state.exp_avg.detach(), state.exp_avg_sq.detach(), state.step
        losses = []
        # GroupedConvMode: the hypergradient is a second derivative through the classifier, and aten's double
        # backward of a depthwise convolution loops over its channels (adv2core/models/grouped_conv.py)
        with torch.enable_grad(), GroupedConvMode():
            for i in range(k):
                m = m.detach().requires_grad_(True)
                obj = self._objective(z, m, target, offs[i], size)
                (g,) = torch.autograd.grad(obj.sum(), m, create_graph=True)
                m_new, ea, eas, step = self._adam(m, g, ea, eas, step)
                losses.append((m_new - target_map).pow(2).flatten(1).sum(1))
                m = m_new
        loss = torch.stack(losses).mean(0) if losses else torch.zeros(x.shape[0], device=x.device)
        new = MaskState(m.detach(), ea.detach(), eas.detach(), step.detach(), state.keys, state.draws + k)
        return new, loss

    # -- maps ----------------------------------------------------------------------------------------
    def explain(self, x: torch.Tensor, target: torch.Tensor, *, ids: Sequence[str] | None = None) -> torch.Tensor:
        """``iterations`` Adam steps from ``init`` for the whole batch; ids seed each image's jitter."""
        state = self.init_state(x, target, ids)
        return self.plain_steps(x, target, state, self.cfg.iterations).m

    __call__ = explain

    def differentiable_map(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MASK has no closed-form map: attacks use :meth:`unrolled_steps` (spec 2.4)."""
        raise NotImplementedError("MASK is an optimisation; use init_state/plain_steps/unrolled_steps")
