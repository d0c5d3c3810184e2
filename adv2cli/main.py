"""Entry point of the ``adv2`` command (typer). Heavy imports happen inside commands."""

from __future__ import annotations

import typer

from adv2cli import core_cmds

app = typer.Typer(
    name="adv2",
    help="adv2-bench: ADV^2 attacks on interpreters — data, models, explanations, attacks, benchmark runs, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
core_cmds.register(app)

try:  # pipeline commands (run, runs, sql, report) live beside the flows
    from adv2cli import pipeline_cmds
except ImportError:  # pragma: no cover - only while the pipeline package is absent
    pipeline_cmds = None
if pipeline_cmds is not None:
    pipeline_cmds.register(app)

try:
    from adv2cli import attack_cmd
except ImportError:  # pragma: no cover
    attack_cmd = None
if attack_cmd is not None:
    attack_cmd.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
