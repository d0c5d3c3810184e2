"""How far an *unoptimised* perturbation moves the Grad and CAM maps of the packaged real models.

Context for the `real` preset's Grad cells (docs/results-real.md): ADV^2-Grad's L1 to the benign map is
compared with PGD's, but a random +-eps sign perturbation already moves a 224-px Grad map almost as far as
PGD does. This prints, for the first 12 correctly classified imagenet-samples photos of each model, the mean
L1 between the benign map (true class) and (a) the map of the same image for a random other class, (b) the
map after uniform random sign noise of size eps = 0.031 and (c) of size eps / 4 (both for the true class).

    ADV2_DATA=... python benchmarks/grad_noise_floor.py     # needs `make` (photos, SqueezeNet weights)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adv2core.data.imagenet_samples import ImageNetSamplesDataset  # noqa: E402
from adv2core.paths import cache_dir  # noqa: E402
from adv2core.interpreters.cam import CAM  # noqa: E402
from adv2core.interpreters.grad import Grad  # noqa: E402
from adv2core.models.registry import load_model  # noqa: E402

EPS = 0.031


def sign_noise(x: torch.Tensor, size: float, gen: torch.Generator) -> torch.Tensor:
    s = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype).mul_(2).sub_(1)
    return (x + size * s).clamp(0, 1)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    ds = ImageNetSamplesDataset(root=cache_dir("datasets") / "imagenet-samples")
    batch = ds.load(range(len(ds)))
    print("| model | interpreter | other class, same image | sign noise eps | sign noise eps/4 |")
    print("|---|---|---|---|---|")
    for name in ("efficientnet-lite0", "squeezenet1_1"):
        model = load_model(name).eval()
        with torch.no_grad():
            ok = model(batch.images).argmax(1) == batch.labels
        x, y = batch.images[ok][:12], batch.labels[ok][:12]
        other = (y + 1 + torch.randint(0, model.num_classes - 1, y.shape, generator=gen)) % model.num_classes
        noisy, small = sign_noise(x, EPS, gen), sign_noise(x, EPS / 4, gen)
        for interp in (Grad(model), CAM(model)):
            base = interp.explain(x, y)
            l1 = [float((interp.explain(a, c) - base).abs().mean()) for a, c in ((x, other), (noisy, y), (small, y))]
            print(f"| {name} | {interp.name} | " + " | ".join(f"{v:.3f}" for v in l1) + " |")


if __name__ == "__main__":
    main()
