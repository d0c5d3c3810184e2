"""Defence stage: one task per (model, detector), after the attack and cross-evaluation stages.

Why per model and not per shard: see :mod:`adv2core.defences.stage` (one calibration and one threshold
per model and detector; the shards are streamed inside the task). The task loads the model, the run's
interpreters and the dataset by name (:mod:`tasks.worker`), draws the calibration images that follow the
run's selection (or cross-fits over the evaluated images: ``defence_settings.cross_fit_folds``,
:mod:`adv2core.defences.crossfit`), scores everything through :mod:`adv2core.defences.stage` and writes the unit's
``detections`` rows through the results store (atomic, manifest last: resumable like the other stages).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence


from adv2core.config import ResolvedConfig, derive_seed
from adv2core.config.unitkeys import unit_key
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from tasks import worker
from tasks.common import Deadline, stage_task, unit_summary


def lid_pgd_config(rc: ResolvedConfig) -> Any:
    """PGD settings of LID's adversarial fit examples: the run's PGD section (the attack preset's when PGD is
    not run), steps capped by ``defence_settings.lid_pgd_steps`` and ``attacks.step_cap``."""
    from adv2core.attacks.config import load_preset
    from tasks.attack import attack_config

    cfg = attack_config(rc).pgd if "pgd" in rc.attack_params else load_preset(rc.bench.attacks.preset).pgd
    caps = [c for c in (rc.bench.defence_settings.lid_pgd_steps, rc.bench.attacks.step_cap) if c]
    return cfg.model_copy(update={"steps": min([cfg.steps, *caps])})


def defence_units(rc: ResolvedConfig) -> list[ShardUnit]:
    """One unit per (model, detector); ``attack`` holds the detector's settings hash."""
    from adv2core.defences.stage import detector_hash

    s = rc.bench.defence_settings
    pgd = lid_pgd_config(rc).model_dump(mode="json") if "lid" in rc.bench.detectors else None
    return [ShardUnit(rc.config_hash, "defence", m, d, detector_hash(d, s, pgd if d == "lid" else None), 0, 1)
            for m in rc.bench.models.names for d in rc.bench.detectors]


def defence_hashes(rc: ResolvedConfig) -> dict[str, str]:
    """detector -> settings hash of this run (recorded in the run's preflight JSON for the report)."""
    return {u.interpreter: u.attack for u in defence_units(rc)[: len(rc.bench.detectors)]}


def run_defence_unit(payload: dict[str, Any], run: dict[str, Any], model: str, detector: str,
                     force: bool = False, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Body of the defence task: calibrate ``detector`` for ``model``, score every shard, write the rows.

    ``skip``: interpreters refused for ``model`` at preparation (``gates.on_refused=skip``): their attack
    units do not exist and the ensemble does not use them; the unit records them in its manifest."""
    from adv2core.bench.cell import select_population
    from adv2core.defences import stage

    rc = worker.start_task(payload)
    unit = next(u for u in defence_units(rc) if u.model == model and u.interpreter == detector)
    store = ResultStore(rc.results_root)
    if (not force and store.is_complete(unit)
            and store.recorded_refusals(rc.config_hash).get(unit, frozenset()) == frozenset(skip)):
        return unit_summary(unit, "skipped")
    t0 = time.perf_counter()
    deadline = Deadline(rc.bench.pipeline.shard_budget_s, f"defence {detector} of {model}")
    device = worker.resolve_device(rc.bench.pipeline.device)
    ds = worker.get_dataset(rc)
    settings = rc.bench.defence_settings
    model_obj = worker.get_model(rc, model, device)
    names = [n for n in rc.bench.interpreters.names if n not in skip]
    bs = rc.bench.attacks.batch_size
    seed = derive_seed(rc.bench.seed, "defence", model, detector)


    def shards() -> Iterator[stage.ShardInputs]:
        attacks = rc.bench.attacks.names
        for s in range(rc.num_shards):
            deadline.check()
            yield stage.shard_inputs(store.root, rc.config_hash, model, names, attacks, s, rc.num_shards,
                                     ds.load, device)

    def scorer_of(fit: stage.InputSet | None) -> tuple[stage.Scorer, list[dict[str, Any]]]:
        if detector == "fs":
            return stage.fs_scorer(model_obj, settings), []
        if detector == "ensemble":
            return stage.ensemble_scorer(worker.get_interpreters(rc, model, names, device), settings, bs), []
        assert fit is not None
        return stage.lid_scorer(model_obj, settings, fit, make_adv)

    make_adv = stage.pgd_examples(model_obj, lid_pgd_config(rc), seed, bs) if detector == "lid" else None
    if settings.cross_fit_folds:  # calibration on the other folds of the evaluated images (crossfit module)
        from adv2core.defences import crossfit

        if detector == "lid":
            make_adv = crossfit.per_image(make_adv)

            def make(benign: stage.InputSet, train: Any) -> tuple[stage.Scorer, list[dict[str, Any]], Any]:
                k = stage.fit_split(len(train), settings.lid_fit_fraction)
                return (*scorer_of(crossfit.take(benign, train[:k])), train[k:])
        else:
            make = crossfit.fixed(scorer_of(None)[0])
        rows = crossfit.score_model_crossfit(make, shards(), settings.cross_fit_folds, settings.calibration.fpr,
                                             seed)
    else:
        n_sel = len(worker.selected_indices(rc, len(ds)))
        cal_batch, _ = select_population(model_obj, ds.load(stage.calibration_indices(
            n_sel, len(ds), settings.calibration_images)), rc.bench.data.population)
        cal = stage.InputSet(list(cal_batch.ids), cal_batch.images.to(device), cal_batch.labels.long().to(device))
        fit = None
        if detector == "lid":
            k = stage.fit_split(len(cal.ids), settings.lid_fit_fraction)
            fit = stage.InputSet(cal.ids[:k], cal.x[:k], cal.cls[:k])
            cal = stage.InputSet(cal.ids[k:], cal.x[k:], cal.cls[k:])
        scorer, fit_rows = scorer_of(fit)
        rows = stage.score_model(scorer, cal, shards(), settings.calibration.fpr, fit_rows)
    deadline.check()
    base = {"run_id": run["run_id"], "config_hash": rc.config_hash, "code_version": run["code_version"],
            "seed": int(rc.bench.seed), "dataset": rc.bench.data.dataset, "model": model, "detector": detector,
            "defence_hash": unit.attack, "target_fpr": settings.calibration.fpr}
    table = table_from_rows("detections", [{**r, **base} for r in rows])
    seconds = time.perf_counter() - t0
    store.write_shard(unit, {"detections": table}, None, run_id=run["run_id"], seconds=seconds,
                      unit_key=unit_key(rc, unit), refused=skip)
    return unit_summary(unit, "done", rows=len(rows), seconds=round(seconds, 3), device=worker.device_label(device))


defence_task = stage_task(run_defence_unit, "defence", "defence-{model}-{detector}")
