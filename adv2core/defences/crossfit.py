"""K-fold cross-fitted calibration, for splits too small to hold calibration images of their own.

The default defence stage (:func:`adv2core.defences.stage.score_model`) thresholds on benign images drawn
after the run's selection. A split like imagenet-samples (25 photos) cannot hold both the evaluated images
and a disjoint calibration set of useful size. With ``defence_settings.cross_fit_folds = K`` the evaluated
benign images are dealt into K folds (:func:`fold_assignment`: a seeded permutation of their ids, dealt
round-robin, so fold sizes differ by at most one); for fold f, the threshold (and LID's fit) comes from the
images of the other K - 1 folds only, and the benign images of fold f and the adversarial examples made
from them are flagged against it. So every flag still comes from a threshold that never saw that image
(:func:`~adv2core.defences.calibrate.check_disjoint` is applied per fold). The rows carry their ``fold``;
the report evaluates each fold on its own and pools the counts
(:func:`~adv2core.defences.calibrate.evaluate_folds`).

What it cannot do: a 5 % FPR is resolved only to 1 / (calibration images of a fold), so with 16 images the
threshold is the largest benign calibration score; read the ROC AUC alongside the rates.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from adv2core.defences.calibrate import check_disjoint
from adv2core.defences.stage import InputSet, Scorer, ShardInputs, _f32, rows_for, thresholds
from adv2core.errors import ConfigError

#: make(benign, train_idx) -> (scorer, its fit rows, indices into ``benign`` of its calibration images)
FoldScorer = Callable[[InputSet, np.ndarray], tuple[Scorer, list[dict], np.ndarray]]


def fold_assignment(ids: Sequence[str], folds: int, seed: int, minimum: int = 4) -> dict[str, int]:
    """Image id -> fold in ``[0, folds)``: ids ordered by sha256(seed:id), dealt round-robin.

    Raises ConfigError when a fold's complement would hold fewer than ``minimum`` images."""
    uniq = sorted(set(map(str, ids)))
    if folds < 2:
        raise ConfigError(f"cross-fitting needs >= 2 folds, got {folds}")
    if len(uniq) < folds or len(uniq) - -(-len(uniq) // folds) < minimum:
        raise ConfigError(f"cross-fitting {folds} folds over {len(uniq)} evaluated images leaves fewer than "
                          f"{minimum} calibration images per fold; lower defence_settings.cross_fit_folds or "
                          f"evaluate more images")
    order = sorted(uniq, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return {i: n % folds for n, i in enumerate(order)}


def concat_sets(sets: Iterable[InputSet], key: str) -> InputSet:
    """One InputSet of several (maps kept where every part has them)."""
    parts = [s for s in sets if s.ids]
    if not parts:
        raise ConfigError("cross-fitting: the attack stage left no evaluated images for this model")
    names = set.intersection(*(set(s.maps) for s in parts))
    return InputSet([i for s in parts for i in s.ids], torch.cat([s.x for s in parts]),
                    torch.cat([s.cls for s in parts]), {n: torch.cat([s.maps[n] for s in parts]) for n in names}, key)


def take(s: InputSet, idx: Sequence[int] | np.ndarray) -> InputSet:
    """The rows ``idx`` of ``s`` (same order)."""
    ix = [int(i) for i in idx]
    t = torch.as_tensor(ix, dtype=torch.long, device=s.x.device)
    return InputSet([s.ids[i] for i in ix], s.x[t], s.cls[t], {n: m[t] for n, m in s.maps.items()})


def per_image(make: Callable[[InputSet], torch.Tensor]) -> Callable[[InputSet], torch.Tensor]:
    """``make`` (e.g. LID's PGD fit examples) computed at most once per image id across folds."""
    done: dict[str, torch.Tensor] = {}

    def get(s: InputSet) -> torch.Tensor:
        missing = [n for n, i in enumerate(s.ids) if i not in done]
        if missing:
            sub = take(s, missing)
            done.update(zip(sub.ids, make(sub)))
        return torch.stack([done[i] for i in s.ids])

    return get


def fixed(scorer: Scorer) -> FoldScorer:
    """A detector without a fit (FS, ensemble): the same scorer every fold, calibrated on the whole rest."""
    return lambda benign, train_idx: (scorer, [], train_idx)


def score_model_crossfit(make: FoldScorer, shards: Iterable[ShardInputs], folds: int, fpr: float,
                         seed: int) -> list[dict]:
    """Score every shard's benign images and sources with per-fold thresholds (see the module docstring);
    rows as :func:`~adv2core.defences.stage.score_model`'s, each with its ``fold``. A scorer's scores of a
    set are computed once however many folds use them."""
    shs = list(shards)
    benign = concat_sets([sh.benign for sh in shs], "benign-all")
    sources = [src for sh in shs for src in sh.sources]
    fold_of = fold_assignment(benign.ids, folds, seed)
    bf = np.asarray([fold_of[i] for i in benign.ids])
    memo: dict[tuple[Scorer, str], dict[str, np.ndarray]] = {}

    def scores(scorer: Scorer, s: InputSet) -> dict[str, np.ndarray]:
        if (scorer, s.key) not in memo:
            memo[(scorer, s.key)] = {v: _f32(t) for v, t in scorer(s).items()}
        return memo[(scorer, s.key)]

    rows: list[dict] = []
    for f in range(folds):
        scorer, fit_rows, cal_idx = make(benign, np.flatnonzero(bf != f))
        b = scores(scorer, benign)
        cal = {v: s[cal_idx] for v, s in b.items()}
        thr = thresholds(cal, fpr)
        here = np.flatnonzero(bf == f)
        out = list(fit_rows) + rows_for("calibration", take(benign, cal_idx), cal, thr)
        out += rows_for("benign", take(benign, here), {v: s[here] for v, s in b.items()}, thr)
        for src in sources:
            sel = [n for n, i in enumerate(src.inputs.ids) if fold_of[i] == f]
            if sel:
                sc = scores(scorer, src.inputs)
                out += rows_for("adversarial", take(src.inputs, sel), {v: s[sel] for v, s in sc.items()}, thr,
                                attack=src.attack, interpreter=src.interpreter,
                                true_class=[src.true_class[n] for n in sel], target=True)
        used = [r["image_id"] for r in out if r["role"] in ("fit", "calibration")]
        check_disjoint(used, [benign.ids[i] for i in here])
        rows += [{**r, "fold": f} for r in out]
    return _one_variant_across_folds(rows, folds)


def _one_variant_across_folds(rows: list[dict], folds: int) -> list[dict]:
    """A fitted detector may pick a different variant per fold (LID's k by cross-validation): the report pools
    a variant's folds, so such rows get one joint name listing each fold's pick (``k7|k7|k5|k7|k7``)."""
    per = [sorted({r["variant"] for r in rows if r["fold"] == f}) for f in range(folds)]
    if all(len(v) == 1 for v in per) and len({v[0] for v in per}) > 1:
        joint = "|".join(v[0] for v in per)
        return [{**r, "variant": joint} for r in rows]
    return rows
