"""What both recipes need: the prepared corpus checked against the preset, and trained models
loaded back from their checkpoints (EMA weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from models.errors import UserError
from models.prior import MelInversionPrior
from models.student import IAFStudent, upgrade_state_dict
from models.teacher import GaussianWaveNet
from training.config import Preset, preset_from_dict
from training.data.dataset import PreparedCorpus
from training.loop.checkpoint import CheckpointManager, load_checkpoint

log = logging.getLogger(__name__)


def check_corpus(preset: Preset, data_dir: Path) -> PreparedCorpus:
    """Open a prepared corpus and check it was prepared with this preset's front end."""
    if not (data_dir / "prepared.json").is_file():
        raise UserError(f"{data_dir} is not a prepared corpus (run `distilwave data prepare`)")
    corpus = PreparedCorpus(data_dir)
    if corpus.mel_config != preset.mel:
        raise UserError(
            f"{data_dir} was prepared with a different mel front end than preset "
            f"{preset.name!r} (sample rate {corpus.mel_config.sample_rate} vs "
            f"{preset.mel.sample_rate}); prepare it again with --preset {preset.name}"
        )
    return corpus


def resolve_checkpoint(path: Path, kind: str) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (else its newest step)."""
    if path.is_dir():
        manager = CheckpointManager(path / "checkpoints", keep=1)
        if manager.best_path.is_file():
            return manager.best_path
        found = manager.latest()
        if found is None:
            raise UserError(f"{path} holds no {kind} checkpoint")
        return found[0]
    if not path.is_file():
        raise UserError(f"no {kind} checkpoint at {path}")
    return path


def _trained_state(path: Path, kind: str) -> tuple[dict[str, Any], Preset]:
    path = resolve_checkpoint(path, kind)
    state = load_checkpoint(path)
    if state.get("kind") != kind:
        raise UserError(f"{path} is a {state.get('kind')} checkpoint, not a {kind}")
    state["path"] = str(path)
    return state, preset_from_dict(state["config"]["preset"])


def load_prior(path: Path, device: torch.device) -> MelInversionPrior:
    """The EMA mel-inversion prior from a checkpoint file or a prior run directory."""
    state, preset = _trained_state(path, "prior")
    model = MelInversionPrior(preset.student.prior, preset.mel)
    model.load_state_dict(state["ema"]["shadow"])
    log.info("loaded prior (EMA) from %s, step %d", state["path"], state["step"])
    return model.to(device).eval()


def trained_preset(path: Path, kind: str) -> Preset:
    """The preset a ``kind`` checkpoint (or run directory) was trained with."""
    return _trained_state(path, kind)[1]


def load_teacher(path: Path, device: torch.device) -> GaussianWaveNet:
    """The EMA teacher from a checkpoint file or a teacher run directory (its best.pt)."""
    state, preset = _trained_state(path, "teacher")
    model = GaussianWaveNet(preset.teacher, preset.mel)
    model.load_state_dict(state["ema"]["shadow"])
    log.info("loaded teacher (EMA) from %s, step %d", state["path"], state["step"])
    return model.to(device).eval()


def load_student(path: Path, device: torch.device) -> tuple[IAFStudent, Preset, dict[str, Any]]:
    """The EMA student, the preset it was trained with and its checkpoint metadata."""
    state, preset = _trained_state(path, "student")
    student = IAFStudent(preset.student, preset.mel)
    student.load_state_dict(upgrade_state_dict(state["ema"]["shadow"], preset.student))
    log.info("loaded student (EMA) from %s, step %d", state["path"], state["step"])
    meta = {"step": state["step"], "elapsed_seconds": state.get("elapsed")}
    meta["checkpoint"] = Path(state["path"]).name
    return student.to(device).eval(), preset, meta
