"""``adv2 explain`` / ``adv2 train-rts``: maps of embedded test images, PNG grid, localisation score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def train_rts_for(model_name: str, preset: str) -> dict[str, Any]:
    from adv2core.interpreters.registry import interpreter_spec
    from adv2core.interpreters.rts_training import train_rts
    from adv2core.models.registry import load_model

    model = load_model(model_name, train_if_missing=True)
    _, metrics = train_rts(model_name, model, None, interpreter_spec("rts", preset, model_name).config, progress=True)
    return {"model": model_name, **metrics}


def run_explain(
    models: list[str], interpreters: list[str], n_images: int, out: Path, *, score: bool, preset: str, device: str,
    score_images: int | None = None, score_batch: int = 128, gates: Any = None,
) -> dict[str, Any]:
    """Maps of the first ``n_images`` test images for every model x interpreter (one PNG grid with the GT
    masks) and, with ``score``, the localisation score over the first ``score_images`` test images (all by
    default): mean top-k IoU for the true class with a bootstrap CI, and for a random wrong class."""
    from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset
    from adv2core.errors import ConfigError
    from adv2core.interpreters.localization import localization_scores
    from adv2core.interpreters.registry import build_interpreter, interpreter_class, interpreter_spec
    from adv2core.metrics.stats import bootstrap_ci
    from adv2core.models.registry import MODEL_NAMES, load_model
    from adv2core.report.grids import map_grid

    for name in interpreters:  # validate every name before any (possibly long) model loading
        interpreter_class(name)
    for name in models:
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    ds = EmbeddedDataset("test", EmbeddedDataConfig())
    if n_images > len(ds):
        raise ConfigError(f"--images {n_images} exceeds the {len(ds)} embedded test images")
    n_score = len(ds) if score_images is None else min(score_images, len(ds))
    result: dict[str, Any] = {"images": n_images, "localization": {}}
    columns: dict[str, torch.Tensor] = {}
    grid_batch = ds.load(list(range(n_images)))
    score_batch_data = ds.load(list(range(n_score))) if score else None
    from adv2core.gates import GatesConfig, preflight_dataset

    gates = gates or GatesConfig()
    result["gates"] = {}
    for model_name in models:
        model = load_model(model_name, train_if_missing=True, device=device)
        interps = {n: build_interpreter(interpreter_spec(n, preset, model_name), model, train_if_missing=True, progress=True)
                   for n in interpreters}
        # refuses a model at chance or (on_degenerate=refuse) an interpreter with degenerate maps
        gate = preflight_dataset(model, model_name, interps, ds, gates, split="embedded test split")
        result["gates"][model_name] = gate
        for interp_name, interp in interps.items():
            b = grid_batch.to(device)
            # saliency (hot = important) so every column reads alike: MASK's raw map is 1 where it keeps
            marked = " (DEGENERATE)" if gate["interpreters"][interp_name]["status"] != "ok" else ""
            columns[f"{model_name}\n{interp_name}{marked}"] = interp.saliency(interp.explain(b.images, b.labels, ids=b.ids)).cpu()
            if score_batch_data is not None:
                sb = score_batch_data
                per_image = localization_scores(interp, sb.images, sb.labels, sb.masks, ids=sb.ids,
                                                batch_size=score_batch, progress=True)
                true = per_image["true"].numpy()
                mean, lo, hi = bootstrap_ci(true)
                result["localization"][f"{model_name}/{interp_name}"] = {
                    "mean": mean, "lo": lo, "hi": hi, "wrong_class_mean": float(per_image["wrong"].nanmean()),
                    "n": int(len(true)),
                }
    labels = [f"{i} y={int(c)}" for i, c in zip(grid_batch.ids, grid_batch.labels)]
    png = map_grid(grid_batch.images, columns, out, row_labels=labels, gt_masks=grid_batch.masks, title="saliency for the true class (hot = important; MASK shown as 1 - mask)")
    result["png"] = str(png)
    return result
