"""The pipeline's defence stage: score benign and adversarial inputs with each selected detector.

Unit of work: one per **(model, detector)**, not per shard. A detector's threshold (and LID's fitted
classifier) comes from calibration images shared by every shard of the model, and a flag is only
meaningful against that one threshold; splitting by shard would either repeat the calibration per shard
(MASK maps, PGD examples, an LID fit: the same thing computed several times) or need a second unit kind
for it. Memory stays bounded anyway: :func:`score_model` streams the shards (one shard's images and
adversarial examples at a time) and keeps only the scores.

Calibration split: the (up to) ``calibration_images`` images of the same dataset split that come right after
the run's selected ones (indices ``num_images .. num_images + calibration_images - 1``), kept when the model
classifies them correctly under ``data.population = correct`` (the evaluated benign images are such
images too). They are disjoint from every evaluated image by construction, and :func:`check_disjoint`
refuses any overlap anyway. LID is fitted on the first ``lid_fit_fraction`` of them (benign, benign +
uniform noise, and PGD examples made here with the run's PGD settings) and thresholded on the rest, so its
threshold never sees its own training images; FS and the ensemble threshold on all of them. Every id used
is stored (rows with role ``fit`` / ``calibration``).

Evaluated inputs: the benign images the attack stage attacked (role ``benign``), and for each source
(attacked interpreter, attack) its **successful** adversarial examples (role ``adversarial``; spec 3.4
counts flagged successful examples), rebuilt exactly from the stored int16 perturbation. The ensemble
scores each input from the maps of the run's interpreters for the predicted class (y for the benign
images, c_t for a successful example): benign maps and the attacked interpreter's adversarial map come
from the attack stage's arrays, the other interpreters' maps of an adversarial example from the
cross-evaluation stage's arrays (``map_<interpreter>``); only maps missing there are computed here.
Identical examples (PGD ignores the interpreter) are scored once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from adv2core.defences.calibrate import check_disjoint, threshold_at_fpr
from adv2core.defences.config import DefenceSettings
from adv2core.errors import ConfigError, DataError
from adv2core.store.arrays import examples_digest

NONE = "none"  # attack / interpreter of a non-adversarial row
Scorer = Callable[["InputSet"], dict[str, torch.Tensor]]  # variant -> [N] scores


def detector_hash(detector: str, settings: DefenceSettings, pgd: Mapping[str, Any] | None = None) -> str:
    """16 hex digits over what can change one detector's rows (its section, the calibration settings and,
    for LID, the fit split and the PGD settings of its adversarial fit examples)."""
    from adv2core.config import canonical_json
    from adv2core.store.schemas import SCHEMA_VERSION

    blob: dict[str, Any] = {
        "detector": detector, "schema_version": SCHEMA_VERSION,
        "calibration": settings.calibration.model_dump(mode="json"),
        "calibration_images": settings.calibration_images,
        "settings": getattr(settings, detector).model_dump(mode="json"),
    }
    if settings.cross_fit_folds is not None:  # only when set: the hashes of stored disjoint-mode rows stay valid
        blob["cross_fit_folds"] = settings.cross_fit_folds
    if detector == "lid":
        blob["lid_fit_fraction"] = settings.lid_fit_fraction
        blob["pgd"] = dict(pgd or {})
    return hashlib.sha256(canonical_json(blob).encode()).hexdigest()[:16]


def calibration_indices(n_selected: int, n_available: int, count: int, minimum: int = 4) -> list[int]:
    """Dataset indices of the calibration images: up to ``count`` right after the selected ones (a small
    split such as imagenet-samples has fewer; the report shows how many were used), at least ``minimum``."""
    n = min(count, n_available - n_selected)
    if n < minimum:
        raise ConfigError(
            f"the defence stage needs >= {minimum} calibration images after the {n_selected} selected ones, but "
            f"the split has {n_available} images; lower data.num_images or use a larger split")
    return list(range(n_selected, n_selected + n))


def fit_split(n: int, fraction: float) -> int:
    """How many of ``n`` calibration images LID fits on (at least 3, leaving at least 2 to threshold)."""
    k = int(round(n * fraction))
    if n < 5:
        raise ConfigError(f"LID needs >= 5 usable calibration images (3 to fit, 2 to threshold), got {n}")
    return min(max(k, 3), n - 2)


@dataclass
class InputSet:
    """Images (on the device) with their ids, the class they are explained for, and interpreter maps."""

    ids: list[str]
    x: torch.Tensor
    cls: torch.Tensor  # the predicted class: y (benign) or c_t (successful adversarial)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # interpreter -> [N,1,h,w] map for ``cls``
    key: str = ""  # identical inputs share a key (scored once)


@dataclass
class Source:
    interpreter: str
    attack: str
    inputs: InputSet
    true_class: list[int]


@dataclass
class ShardInputs:
    benign: InputSet
    sources: list[Source]


def explain_all(interpreters: Mapping[str, Any], s: InputSet, batch_size: int) -> InputSet:
    """Fill the maps ``s`` lacks, ``batch_size`` images per call (the only maps this stage computes)."""
    for name, it in interpreters.items():
        if name in s.maps or not s.ids:
            continue
        parts = [it.explain(s.x[i:i + batch_size], s.cls[i:i + batch_size], ids=s.ids[i:i + batch_size])
                 for i in range(0, len(s.ids), batch_size)]
        s.maps[name] = torch.cat(parts).float()
    return s


# ------------------------------------------------------------------------------------- reading the store
def _maps(arrs: Mapping[str, np.ndarray], key: str, rows: np.ndarray, device: str) -> torch.Tensor:
    return torch.as_tensor(arrs[key][rows].astype(np.float32)).to(device)


def shard_inputs(root: Path, config_hash: str, model: str, interpreters: Sequence[str], attacks: Sequence[str],
                 shard: int, num_shards: int, load: Callable[[list[int]], Any], device: str) -> ShardInputs:
    """The benign images of one shard and every source's successful adversarial examples, with the maps
    the attack and cross-evaluation stages stored (see the module docstring)."""
    from adv2core.metrics import apply_int16_perturbation
    from adv2core.store.arrays import read_arrays
    from adv2core.store.layout import ShardUnit, arrays_path

    benign: InputSet | None = None
    sources: list[Source] = []
    for interp in interpreters:
        for attack in attacks:
            unit = ShardUnit(config_hash, "attack", model, interp, attack, shard, num_shards)
            path = arrays_path(root, unit)
            arrs = read_arrays(path) if path.is_file() else {"image_id": np.zeros(0, str)}
            ids = [str(i) for i in arrs["image_id"]]
            if benign is None:
                batch = load(arrs["index"].tolist()) if ids else None
                if batch is not None and list(batch.ids) != ids:
                    raise DataError(f"images of {model} {unit.shard_name} could not be reloaded identically "
                                    f"(dataset changed since the attack?)")
                x = batch.images.to(device) if batch is not None else torch.zeros(0, 3, 1, 1, device=device)
                y = torch.as_tensor(arrs.get("true_class", np.zeros(0, np.int64))).to(device)
                benign = InputSet(ids, x, y, key=f"benign-{shard}")
            elif ids != benign.ids:
                raise DataError(f"{model}/{interp}/{attack} {unit.shard_name} attacked other images than the "
                                f"model's other cells; rerun the attack stage")
            if not ids:
                continue
            if interp not in benign.maps and "benign_maps" in arrs:
                benign.maps[interp] = _maps(arrs, "benign_maps", np.arange(len(ids)), device)
            ok = np.flatnonzero(arrs["success"])
            if ok.size == 0:
                continue
            sel = [ids[i] for i in ok]
            delta = torch.as_tensor(arrs["perturbation"][ok]).to(device)
            x_adv = apply_int16_perturbation(benign.x[torch.as_tensor(ok, device=device)], delta)
            y_t = torch.as_tensor(arrs["target_class"][ok]).to(device)
            inp = InputSet(sel, x_adv, y_t, key=examples_digest(sel, arrs["perturbation"][ok], arrs["target_class"][ok]))
            if "adv_maps" in arrs:
                inp.maps[interp] = _maps(arrs, "adv_maps", ok, device)
            tpath = arrays_path(root, ShardUnit(config_hash, "transfer", model, interp, attack, shard, num_shards))
            if tpath.is_file():
                t = read_arrays(tpath)
                pos = {str(i): n for n, i in enumerate(t["image_id"])}
                if all(i in pos for i in sel):
                    rows = np.asarray([pos[i] for i in sel])
                    for j in interpreters:
                        if j not in inp.maps and f"map_{j}" in t:
                            inp.maps[j] = _maps(t, f"map_{j}", rows, device)
            sources.append(Source(interp, attack, inp, benign.cls[torch.as_tensor(ok, device=device)].tolist()))
    assert benign is not None
    return ShardInputs(benign, sources)


# ------------------------------------------------------------------------------------- scoring
def _f32(v: torch.Tensor) -> np.ndarray:
    return v.detach().float().cpu().numpy().astype(np.float32)


def thresholds(cal_scores: Mapping[str, np.ndarray], fpr: float) -> dict[str, float]:
    """Per variant: the threshold flagging at most ``fpr`` of the (float32) calibration scores."""
    return {v: threshold_at_fpr(s.astype(np.float32), fpr) for v, s in cal_scores.items()}


def rows_for(role: str, s: InputSet, scores: Mapping[str, np.ndarray], thr: Mapping[str, float] | None,
             *, attack: str = NONE, interpreter: str = NONE, true_class: Sequence[int] | None = None,
             target: bool = False) -> list[dict[str, Any]]:
    """Row dicts of one scored set (identity columns are added by the caller)."""
    out = []
    cls = s.cls.detach().cpu().tolist()
    for variant, v in scores.items():
        t = None if thr is None else thr[variant]
        for n, image_id in enumerate(s.ids):
            sc = float(v[n])
            out.append({
                "variant": variant, "role": role, "attack": attack, "interpreter": interpreter, "image_id": image_id,
                "true_class": int(true_class[n]) if true_class is not None else int(cls[n]),
                "target_class": int(cls[n]) if target else None,
                "score": sc, "threshold": t, "flag": None if t is None else bool(np.float32(sc) > t),
            })
    return out


def score_model(scorer: Scorer, calibration: InputSet, shards: Iterator[ShardInputs], fpr: float,
                fit_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Calibrate on ``calibration``, then score every shard's benign images and sources; returns the rows.

    Raises ConfigError when a calibration id is also evaluated (it never should be)."""
    cal = {v: _f32(s) for v, s in scorer(calibration).items()}
    thr = thresholds(cal, fpr)
    rows = list(fit_rows or []) + rows_for("calibration", calibration, cal, thr)
    evaluated: set[str] = set()
    for sh in shards:
        evaluated.update(sh.benign.ids)
        if sh.benign.ids:
            rows += rows_for("benign", sh.benign, {v: _f32(s) for v, s in scorer(sh.benign).items()}, thr)
        done: dict[str, dict[str, np.ndarray]] = {}
        for src in sh.sources:
            inp = src.inputs
            if inp.key not in done:
                done[inp.key] = {v: _f32(s) for v, s in scorer(inp).items()}
            rows += rows_for("adversarial", inp, done[inp.key], thr, attack=src.attack, interpreter=src.interpreter,
                             true_class=src.true_class, target=True)
    check_disjoint(calibration.ids + [r["image_id"] for r in fit_rows or []], sorted(evaluated))
    return rows


# ------------------------------------------------------------------------------------- detectors
def fs_scorer(model: torch.nn.Module, settings: DefenceSettings) -> Scorer:
    from adv2core.defences.squeeze import all_scores

    return lambda s: all_scores(model, s.x, settings.fs)


def ensemble_scorer(interpreters: Mapping[str, Any], settings: DefenceSettings, batch_size: int) -> Scorer:
    from adv2core.defences.ensemble import EnsembleDetector

    det = EnsembleDetector(interpreters, settings.ensemble)

    def score(s: InputSet) -> dict[str, torch.Tensor]:
        explain_all(interpreters, s, batch_size)
        return {"iou": det.score({n: s.maps[n].float() for n in interpreters})}

    return score


def lid_scorer(model: torch.nn.Module, settings: DefenceSettings, fit: InputSet,
               make_adversarial: Callable[[InputSet], torch.Tensor]) -> tuple[Scorer, list[dict[str, Any]]]:
    """Fit LID on ``fit`` (benign, noisy, PGD examples made by ``make_adversarial``); the scorer and the
    fit images' rows (role ``fit``: in-sample scores, no flag)."""
    from adv2core.defences.lid import LIDDetector

    det = LIDDetector(model, settings.lid).fit(fit.x, None, make_adversarial(fit))
    variant = f"k{det.k_}"

    def score(s: InputSet) -> dict[str, torch.Tensor]:
        return {variant: det.score(s.x)}

    return score, rows_for("fit", fit, {variant: _f32(det.score(fit.x))}, None)


def pgd_examples(model: Any, pgd_cfg: Any, seed: int, batch_size: int) -> Callable[[InputSet], torch.Tensor]:
    """Quantised targeted PGD examples (targets as the attack stage draws them) of an InputSet."""
    from adv2core.attacks.registry import build_attack
    from adv2core.attacks.targets import target_classes
    from adv2core.metrics.quantize import quantize_uint8

    attack = build_attack("pgd", model, None, pgd_cfg, seed=seed)

    def make(s: InputSet) -> torch.Tensor:
        t = target_classes(s.cls, s.ids, model.num_classes, seed)
        parts = [quantize_uint8(attack(s.x[i:i + batch_size], t[i:i + batch_size], ids=s.ids[i:i + batch_size])
                                .x_adv.clamp(0, 1)) for i in range(0, len(s.ids), batch_size)]
        return torch.cat(parts)

    return make
