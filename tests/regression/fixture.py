"""The regression fixture: a fixed-seed student and teacher of the smoke preset's structure.

No weights are committed. ``schema.json`` holds what distilwave 0.1.0 (bundle format 1) wrote:
the bundle's ``config.json`` and card, and the student's and teacher's parameter names and
shapes in the order the modules registered them. ``materialise`` fills them with seeded
random values (``torch.randn`` in that order, times ``STD``), adds the front end's fixed
buffers, and writes a format-1 bundle byte for byte as that version's ``save_bundle`` did.
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schema.json"
REFERENCE = HERE / "reference.json"
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "asterisk"
CLIPS = [("hello-world.wav", 1000), ("auth-thankyou.wav", 700)]
TEMPERATURE = 0.8
SEED = 5
STD = 0.15
STUDENT_SEED, TEACHER_SEED = 11, 12


def clip(name: str, samples: int) -> torch.Tensor:
    audio, rate = soundfile.read(SPEECH / name, dtype="float32")
    assert rate == 8000
    return torch.from_numpy(audio[:samples])


def _weights(entries: list[list], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * STD for name, shape in entries}


def _front_end_buffers() -> dict[str, torch.Tensor]:
    from models.config import MelConfig
    from models.mel import MelFrontEnd

    front_end = MelFrontEnd(MelConfig())
    return {f"front_end.{k}": v.contiguous() for k, v in front_end.state_dict().items()}


def materialise(directory: Path) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """Write the format-1 student bundle into ``directory``; return it, the teacher's state
    (format-1 names) and the teacher's config."""
    schema = json.loads(SCHEMA.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    student = {**_weights(schema["student_parameters"], STUDENT_SEED), **_front_end_buffers()}
    save_file(
        {k: v.contiguous() for k, v in student.items()},
        str(directory / "model.safetensors"),
        metadata={"format": "distilwave-bundle"},
    )
    for name in ("config", "card"):
        text = json.dumps(schema[f"bundle_{name}"], indent=2, sort_keys=True) + "\n"
        (directory / f"{name}.json").write_text(text, encoding="utf-8")
    teacher = {**_weights(schema["teacher_parameters"], TEACHER_SEED), **_front_end_buffers()}
    return directory, teacher, schema["teacher_config"]
