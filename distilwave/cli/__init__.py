"""The ``distilwave`` command line: one console script, one sub-command per pipeline step.

Errors a user can fix are one line on stderr (``distilwave: error: ...``) and exit code 2;
a job that fails while running exits 1; ``--help`` on every command explains it.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from models.errors import UserError

app = typer.Typer(
    rich_markup_mode=None,
    name="distilwave",
    help="Fast neural audio generation by distillation: data, training, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the sub-commands (``--help`` stays fast: each imports its heavy parts inside).

    ``generate`` and ``serve`` need only ``models`` and ``service``; the others need the
    training code, and are left out where it is not installed (the serving image)."""
    from distilwave.cli import generate, serve

    try:
        from distilwave.cli import bench, data, run, train
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("training", "benchmarks"):
            raise
    else:
        app.add_typer(data.app, name="data", help="Fetch the default corpus; prepare any corpus.")
        app.add_typer(train.app, name="train")
        app.command("evaluate")(run.evaluate_command)
        app.command("export")(run.export_command)
        app.command("pipeline")(run.pipeline_command)
        app.command("bench")(bench.bench_command)
    app.command("generate")(generate.generate_command)
    app.command("serve")(serve.serve)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _register()
    try:
        result = app(args=argv, prog_name="distilwave", standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        click.echo("distilwave: interrupted", err=True)
        sys.exit(130)
    except (click.ClickException, typer.TyperException) as exc:
        # typer >= 0.29 vendors click: its usage errors are TyperException subclasses
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        click.echo(f"distilwave: error: {' '.join(message.split())}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except UserError as exc:
        click.echo(f"distilwave: error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    if isinstance(result, int) and result:
        sys.exit(result)


if __name__ == "__main__":
    main()
