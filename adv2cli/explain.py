"""``adv2 explain`` / ``adv2 train-rts``: maps of embedded test images, PNG grid, localisation score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _interpreter_opts(name: str, preset: str) -> dict[str, Any]:
    from adv2core.interpreters.config import load_interpreter_config

    cfgs = load_interpreter_config(preset)
    if name == "rts":
        return {"rts_cfg": cfgs["rts"], "train_if_missing": True}
    if name == "mask":
        return {"cfg": cfgs["mask"]}
    return {}


def train_rts_for(model_name: str, preset: str) -> dict[str, Any]:
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.interpreters.rts_training import train_rts
    from adv2core.models.registry import load_model

    model = load_model(model_name, train_if_missing=True)
    _, metrics = train_rts(model_name, model, None, load_interpreter_config(preset)["rts"], progress=True)
    return {"model": model_name, **metrics}


def run_explain(
    models: list[str], interpreters: list[str], n_images: int, out: Path, *, score: bool, preset: str, device: str
) -> dict[str, Any]:
    from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset
    from adv2core.interpreters.registry import build_interpreter, interpreter_class
    from adv2core.metrics import localization_iou
    from adv2core.metrics.stats import bootstrap_ci
    from adv2core.models.registry import load_model
    from adv2core.report.grids import map_grid

    from adv2core.models.registry import MODEL_NAMES
    from adv2core.errors import ConfigError

    for name in interpreters:  # validate every name before any (possibly long) model loading
        interpreter_class(name)
    for name in models:
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    ds = EmbeddedDataset("test", EmbeddedDataConfig())
    n_score = len(ds) if score else n_images
    result: dict[str, Any] = {"images": n_images, "localization": {}}
    columns: dict[str, torch.Tensor] = {}
    grid_batch = ds.load(list(range(n_images)))
    for model_name in models:
        model = load_model(model_name, train_if_missing=True, device=device)
        for interp_name in interpreters:
            interp = build_interpreter(interp_name, model, **_interpreter_opts(interp_name, preset))
            b = grid_batch.to(device)
            columns[f"{model_name}\n{interp_name}"] = interp.explain(b.images, b.labels, ids=b.ids).cpu()
            if score:
                scores = []
                for start in range(0, n_score, 128):
                    sb = ds.load(list(range(start, min(n_score, start + 128)))).to(device)
                    maps = interp.explain(sb.images, sb.labels, ids=sb.ids)
                    scores.append(localization_iou(interp.saliency(maps), sb.masks).cpu())
                vals = torch.cat(scores).numpy()
                mean, lo, hi = bootstrap_ci(vals)
                result["localization"][f"{model_name}/{interp_name}"] = {"mean": mean, "lo": lo, "hi": hi, "n": int(len(vals))}
    labels = [f"{i} y={int(c)}" for i, c in zip(grid_batch.ids, grid_batch.labels)]
    png = map_grid(grid_batch.images, columns, out, row_labels=labels, gt_masks=grid_batch.masks, title="maps for the true class")
    result["png"] = str(png)
    return result
