"""The model bundle: a self-contained directory that serves the student without the teacher.

    bundle/
      config.json        format, versions, sample rate, hop, mel and student configs, the audio
                         convention (loudness, peak), speakers, default temperature
      model.safetensors  the student's weights (weight norm folded), front end included
      card.json          optional model card (data, preset, metrics, licence)
      README.md          optional human-readable card

A bundle is written into a temporary sibling directory and renamed into place, so a
reader never sees a half-written bundle. Format 1 (distilwave 0.1.0: numbered flows, no audio
convention) still loads: its flows get their names and its convention is the one 0.1.0 used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import AudioConvention, MelConfig, StudentConfig
from models.files import replace_directory
from models.student import IAFStudent, upgrade_state_dict
from models.wavenet import fold_weight_norm

FORMAT = "distilwave-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
VERSION = "0.2.0"


@dataclass
class Bundle:
    """A loaded bundle: the ready student and what describes it."""

    student: IAFStudent
    mel: MelConfig
    config: StudentConfig
    audio: AudioConvention = field(default_factory=AudioConvention)
    speakers: list[str] = field(default_factory=list)
    default_temperature: float = 1.0
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    distilwave_version: str = VERSION
    created: float = 0.0

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def save_bundle(
    directory: str | Path,
    student: IAFStudent,
    speakers: list[str] | None = None,
    default_temperature: float = 1.0,
    card: dict[str, Any] | None = None,
    readme: str | None = None,
    audio: AudioConvention | None = None,
) -> Path:
    """Write ``student`` as a bundle at ``directory`` atomically (replacing an old one).

    Args:
        directory: target directory.
        student: the trained student (not modified: a folded copy is saved).
        speakers: names of the speaker ids, index = id (multi-speaker models).
        default_temperature: the noise scale the service uses when a request gives none.
        card: model card fields (JSON-serialisable).
        readme: a short human-readable card written as README.md.
        audio: the loudness convention of the training data (default: -23 LUFS, peak 0.95).
    """
    speakers = list(speakers or [])
    if student.config.n_speakers and len(speakers) not in (0, student.config.n_speakers):
        raise ValueError(
            f"{len(speakers)} speaker names for a model with {student.config.n_speakers} speakers"
        )
    folded = IAFStudent(_inference_config(student.config), student.mel_config)
    folded.load_state_dict(fold_weight_norm(_clone(student)).state_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in folded.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "distilwave_version": VERSION,
        "torch_version": torch.__version__.split("+")[0],
        "kind": "iaf-student",
        "sample_rate": student.mel_config.sample_rate,
        "hop_length": student.mel_config.hop_length,
        "mel": student.mel_config.model_dump(),
        "student": folded.config.model_dump(),
        "audio": (audio or AudioConvention()).model_dump(),
        "speakers": speakers,
        "default_temperature": default_temperature,
    }

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": FORMAT})
        (staging / "config.json").write_text(_json(config), encoding="utf-8")
        if card is not None:
            (staging / "card.json").write_text(_json(card), encoding="utf-8")
        if readme is not None:
            (staging / "README.md").write_text(readme, encoding="utf-8")

    return replace_directory(Path(directory), fill)


def _clone(student: IAFStudent) -> IAFStudent:
    copy = IAFStudent(student.config, student.mel_config)
    copy.load_state_dict(student.state_dict())
    return copy


def _inference_config(config: StudentConfig) -> StudentConfig:
    wavenet = config.wavenet.model_copy(update={"weight_norm": False})
    return config.model_copy(update={"wavenet": wavenet})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc


def read_config(directory: Path) -> dict[str, Any]:
    """A bundle's ``config.json``, checked for format and version (``ValueError`` if not)."""
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / "model.safetensors").is_file():
        raise ValueError(f"{directory} is not a distilwave bundle (config.json, model.safetensors)")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{directory} is not a distilwave bundle (format {config.get('format')!r})"
        )
    if config.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{directory}: bundle format version {config.get('format_version')} is not supported "
            f"(this distilwave reads versions {', '.join(map(str, READABLE_VERSIONS))}); export "
            "it again with `distilwave export --student RUN --out DIR` from this version"
        )
    return config


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by ``save_bundle``; raises ``ValueError`` on anything malformed."""
    directory = Path(directory)
    config = read_config(directory)
    config_path = directory / "config.json"
    try:
        mel = MelConfig.model_validate(config["mel"])
        student_config = StudentConfig.model_validate(config["student"])
        audio = AudioConvention.model_validate(config.get("audio", {}))
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{config_path}: invalid {where}: {first['msg']}") from exc
    for key, value in (("sample_rate", mel.sample_rate), ("hop_length", mel.hop_length)):
        if config.get(key) != value:
            raise ValueError(
                f"{config_path}: {key} {config.get(key)!r} disagrees with the mel config ({value})"
            )
    speakers = config.get("speakers", [])
    if not isinstance(speakers, list) or not all(isinstance(name, str) for name in speakers):
        raise ValueError(f"{config_path}: speakers must be a list of names")
    try:
        default_temperature = float(config.get("default_temperature", 1.0))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: default_temperature must be a number") from exc
    student = IAFStudent(student_config, mel)
    weights_path = directory / "model.safetensors"
    try:
        state = upgrade_state_dict(load_file(str(weights_path)), student_config)
    except SafetensorError as exc:
        raise ValueError(f"{weights_path}: unreadable weights ({exc})") from exc
    try:
        missing, unexpected = student.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ValueError(f"{directory}: weights do not match the config ({exc})") from exc
    if missing or unexpected:
        raise ValueError(
            f"{directory}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    student.to(device).eval()
    card: dict[str, Any] = {}
    card_path = directory / "card.json"
    if card_path.is_file():
        card = _read_json(card_path)
        if not isinstance(card, dict):
            raise ValueError(f"{card_path}: expected a JSON object")
    return Bundle(
        student=student,
        mel=mel,
        config=student_config,
        audio=audio,
        speakers=list(speakers),
        default_temperature=default_temperature,
        card=card,
        path=directory,
        distilwave_version=str(config.get("distilwave_version", "unknown")),
        created=config_path.stat().st_mtime,
    )
