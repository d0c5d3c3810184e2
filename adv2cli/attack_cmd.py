"""``adv2 attack``: one (model, interpreter, attack) cell on the embedded test set (or another dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adv2cli.common import emit_json, pick_device, user_errors


def register(app: typer.Typer) -> None:
    @app.command("attack")
    @user_errors
    def attack(
        model: str = typer.Option("resnet-mini", help="Model name (`adv2 models` lists them; user models via --config)."),
        interpreter: str = typer.Option("cam", help="grad, cam, rts or mask."),
        attack: str = typer.Option("adv2", help="pgd, adv2, stadv or stadv-adv2."),
        images: int = typer.Option(16, help="Number of embedded test images (the first N)."),
        preset: str = typer.Option("quick", help="Attack preset: adv2core/configs/attacks/<preset>.yaml (quick, paper, real) or a YAML path."),
        seed: int = typer.Option(0, help="Seed (target classes, random inits)."),
        batch_size: int = typer.Option(32, min=1, help="Images per attack call."),
        device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
        population: str = typer.Option("correct", help="correct: attack only the images the model classifies "
                                       "correctly (the paper's population); all: every one of the N images."),
        accuracy_floor: Optional[float] = typer.Option(None, help="Refuse a model below this accuracy on the "
                                                       "test split (default: gates.accuracy_floor, 0.9 embedded)."),
        on_degenerate: str = typer.Option("refuse", help="refuse | mark: what to do with degenerate benign maps."),
        dataset: Optional[str] = typer.Option(None, help="Dataset (default: the config's data.dataset, else embedded), e.g. imagenet-samples."),
        config: Optional[Path] = typer.Option(None, "--config", help="Bench config file: its models.custom (user models), "
                                              "data.dataset, data.options and gates are used."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object (success_rate, l1, ... with 95 % intervals)."),
    ) -> None:
        """Attack N test images and print success rate and map metrics (means over successful)."""
        from adv2core.bench.cell import attack_embedded

        from adv2core.gates import GatesConfig

        custom, data_cfg, options, ds_name, gates = None, None, {}, dataset or "embedded", GatesConfig()
        if config is not None:
            from adv2core.config import load_config

            bench = load_config(None, config)
            custom, gates = bench.models.custom, bench.gates
            ds_name = dataset or bench.data.dataset
            if ds_name == bench.data.dataset:
                options = dict(bench.data.options)
        if ds_name == "embedded" and options:
            from adv2core.data.synthetic import EmbeddedDataConfig

            data_cfg, options = EmbeddedDataConfig(**options), {}
        gates = GatesConfig(**{**gates.model_dump(), "on_degenerate": on_degenerate, **(
            {} if accuracy_floor is None else {"per_model_floor": {**gates.per_model_floor, model: accuracy_floor}})})
        out = attack_embedded(model, interpreter, attack, images=images, preset=preset, seed=seed,
                              device=pick_device(device), batch_size=batch_size, train_if_missing=True,
                              data_cfg=data_cfg, dataset=ds_name, dataset_options=options, custom=custom,
                              population=population, gates=gates)
        if json_out:
            emit_json(out)
            return
        typer.echo(f"{model} / {interpreter} / {attack} ({preset}), {images} {ds_name} images:")
        typer.echo(f"  success rate {out['success_rate']:.1%} [{out['success_rate_lo']:.1%}, {out['success_rate_hi']:.1%}]")
        for key in ("confidence", "l1", "l2", "iou_mean", "loc_iou_benign", "loc_iou_adv"):
            if f"{key}_lo" in out and out.get(key) is not None:
                typer.echo(f"  {key:<15} {out[key]:.3f} [{out[f'{key}_lo']:.3f}, {out[f'{key}_hi']:.3f}] (successful samples)")
