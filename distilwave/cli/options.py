"""Options several commands share (typer ``Annotated`` types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PresetOption = Annotated[
    str, typer.Option("--preset", "-p", help="preset name in configs/ or a YAML path")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a preset value, KEY=VALUE (repeatable)"),
]
DataOption = Annotated[
    Path,
    typer.Option(
        "--data", exists=True, file_okay=False, help="prepared corpus (distilwave data prepare)"
    ),
]
RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", help="where checkpoints, logs and TensorBoard go")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="continue the run in --run-dir from its last checkpoint")
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda")
]
