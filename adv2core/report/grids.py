"""Picture grids: images beside their maps (people would rather look than read)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def _np_img(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _np_map(m: torch.Tensor) -> np.ndarray:
    return m.detach().float().squeeze(0).cpu().numpy()


def map_grid(
    images: torch.Tensor,
    columns: dict[str, torch.Tensor],
    out: Path,
    *,
    row_labels: Sequence[str] | None = None,
    gt_masks: torch.Tensor | None = None,
    title: str | None = None,
    image_columns: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a PNG: one row per image; columns = the image, extra images (e.g. adversarial), the
    ground-truth mask, then one map per named column (maps shown at native resolution, nearest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_columns = image_columns or {}
    n = images.shape[0]
    heads = ["image", *image_columns, *(["GT mask"] if gt_masks is not None else []), *columns]
    fig, axes = plt.subplots(n, len(heads), figsize=(1.45 * len(heads), 1.5 * n + 0.4), squeeze=False)
    for i in range(n):
        col = 0
        cells: list[tuple[np.ndarray, str | None]] = [(_np_img(images[i]), None)]
        cells += [(_np_img(v[i]), None) for v in image_columns.values()]
        if gt_masks is not None:
            cells.append((_np_map(gt_masks[i]), "gray"))
        cells += [(_np_map(v[i]), "jet") for v in columns.values()]
        for col, (arr, cmap) in enumerate(cells):
            ax = axes[i][col]
            if cmap is None:
                ax.imshow(arr, interpolation="nearest")
            else:
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[col], fontsize=7)
        if row_labels is not None:
            axes[i][0].set_ylabel(row_labels[i], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
