"""The model bundle: a self-contained directory that serves the student without the teacher.

    bundle/
      config.json        format, versions, sample rate, hop, mel and student configs, speakers
      model.safetensors  the student's weights (weight norm folded), front end included
      card.json          optional model card (data, preset, metrics, licence)
      README.md          optional human-readable card

A bundle is written into a temporary sibling directory and renamed into place, so a
reader never sees a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import MelConfig, StudentConfig
from models.student import IAFStudent
from models.wavenet import fold_weight_norm

FORMAT = "distilwave-bundle"
FORMAT_VERSION = 1
VERSION = "0.1.0"


@dataclass
class Bundle:
    """A loaded bundle: the ready student and what describes it."""

    student: IAFStudent
    mel: MelConfig
    config: StudentConfig
    speakers: list[str] = field(default_factory=list)
    default_temperature: float = 1.0
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def save_bundle(
    directory: str | Path,
    student: IAFStudent,
    speakers: list[str] | None = None,
    default_temperature: float = 1.0,
    card: dict[str, Any] | None = None,
    readme: str | None = None,
) -> Path:
    """Write ``student`` as a bundle at ``directory`` atomically (replacing an old one).

    Args:
        directory: target directory.
        student: the trained student (not modified: a folded copy is saved).
        speakers: names of the speaker ids, index = id (multi-speaker models).
        default_temperature: the noise scale the service uses when a request gives none.
        card: model card fields (JSON-serialisable).
        readme: a short human-readable card written as README.md.
    """
    directory = Path(directory)
    speakers = list(speakers or [])
    if student.config.n_speakers and len(speakers) not in (0, student.config.n_speakers):
        raise ValueError(
            f"{len(speakers)} speaker names for a model with {student.config.n_speakers} speakers"
        )
    folded = IAFStudent(_inference_config(student.config), student.mel_config)
    state = fold_weight_norm(_clone(student)).state_dict()
    folded.load_state_dict(state)
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
        "speakers": speakers,
        "default_temperature": default_temperature,
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": FORMAT})
        _write_json(staging / "config.json", config)
        if card is not None:
            _write_json(staging / "card.json", card)
        if readme is not None:
            (staging / "README.md").write_text(readme, encoding="utf-8")
        # mkdtemp makes a private (0700) directory: give the bundle the usual umask modes so a
        # service running as another user (a container) can read it
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~umask)
        _fsync_dir(staging)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _clone(student: IAFStudent) -> IAFStudent:
    copy = IAFStudent(student.config, student.mel_config)
    copy.load_state_dict(student.state_dict())
    return copy


def _inference_config(config: StudentConfig) -> StudentConfig:
    wavenet = config.wavenet.model_copy(update={"weight_norm": False})
    return config.model_copy(update={"wavenet": wavenet})


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by ``save_bundle``; raises ``ValueError`` on anything malformed."""
    directory = Path(directory)
    config_path = directory / "config.json"
    weights_path = directory / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{directory} is not a distilwave bundle (config.json, model.safetensors)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: invalid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{directory} is not a distilwave bundle (format {config.get('format')!r})"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}: bundle format version {config.get('format_version')} is not supported "
            f"(this distilwave reads version {FORMAT_VERSION})"
        )
    try:
        mel = MelConfig.model_validate(config["mel"])
        student_config = StudentConfig.model_validate(config["student"])
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing {exc}") from exc
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
    try:
        state = load_file(str(weights_path))
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
    card_path = directory / "card.json"
    card: dict[str, Any] = {}
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{card_path}: invalid JSON ({exc})") from exc
    return Bundle(
        student=student,
        mel=mel,
        config=student_config,
        speakers=list(speakers),
        default_temperature=default_temperature,
        card=card,
        path=directory,
    )
