"""The ``distilwave`` command line: one console script, one sub-command per pipeline step.

Errors a user can fix are one line on stderr (``distilwave: error: ...``) and exit code 2;
a job that fails while running exits 1; ``--help`` on every command explains it.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from training.config import ConfigError
from training.errors import UserError

app = typer.Typer(
    name="distilwave",
    help="Fast neural audio generation by distillation: data, training, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the sub-command groups (imported here to keep ``--help`` start-up light)."""
    from training.data.cli import app as data_app

    app.add_typer(data_app, name="data", help="Fetch the default corpus; prepare any corpus.")
    from training.train_cli import app as train_app

    app.add_typer(train_app, name="train")
    from training import run_cli

    app.command("evaluate")(run_cli.evaluate_command)
    app.command("export")(run_cli.export_command)
    app.command("generate")(run_cli.generate_command)
    app.command("pipeline")(run_cli.pipeline_command)
    from training.bench import bench_command

    app.command("bench")(bench_command)
    from training.serve_cli import serve

    app.command("serve")(serve)


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
    except (UserError, ConfigError) as exc:
        click.echo(f"distilwave: error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    if isinstance(result, int) and result:
        sys.exit(result)


if __name__ == "__main__":
    main()
