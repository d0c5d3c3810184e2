"""Entry point of the ``adv2`` command (typer). Heavy imports happen inside commands."""

from __future__ import annotations

import typer

from adv2cli import attack_cmd, core_cmds, pipeline_cmds

app = typer.Typer(
    name="adv2",
    help="adv2-bench: ADV^2 attacks on interpreters — data, models, explanations, attacks, benchmark runs, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (core_cmds, attack_cmd, pipeline_cmds):
    module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
