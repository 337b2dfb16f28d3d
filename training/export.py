"""``distilwave export``: the self-contained student bundle with its model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.bundle import FORMAT, VERSION, save_bundle
from models.config import AudioConvention
from models.errors import UserError
from training.config import Preset
from training.recipes.common import load_student

log = logging.getLogger(__name__)


def _data_card(data_dir: Path | None) -> dict[str, Any]:
    if data_dir is None or not (data_dir / "prepared.json").is_file():
        return {}
    prepared = json.loads((data_dir / "prepared.json").read_text())
    source = prepared.get("source")
    card: dict[str, Any] = {
        # the folder's name only: a card is public, the trainer's paths are not
        "source": Path(source).name if source else None,
        "counts": prepared.get("counts"),
        "speakers": prepared.get("speakers"),
    }
    attribution = data_dir / "ATTRIBUTION.md"
    if attribution.is_file():
        card["attribution"] = attribution.read_text(encoding="utf-8")
    return card


def audio_convention(preset: Preset, data_dir: Path | None) -> AudioConvention:
    """The loudness the training data was brought to: the prepared corpus's own record, else
    the preset's data settings."""
    data = preset.data.model_dump()
    if data_dir is not None and (data_dir / "prepared.json").is_file():
        recorded = json.loads((data_dir / "prepared.json").read_text()).get("data")
        if isinstance(recorded, dict):
            data = {**data, **recorded}
    return AudioConvention(loudness_lufs=data["loudness_lufs"], peak_limit=data["peak_limit"])


def _readme(card: dict[str, Any]) -> str:
    metrics = card.get("metrics", {})
    lines = [
        f"# {card['name']}",
        "",
        "A distilwave student: a parallel inverse autoregressive flow distilled from a Gaussian",
        "WaveNet teacher. Serve it with `distilwave serve --bundle DIR`.",
        "",
        f"- sample rate {card['sample_rate']} Hz, hop {card['hop_length']}",
        f"- {card['architecture']['flows']} flows x {card['architecture']['layers_per_flow']} "
        f"layers, {card['architecture']['parameters']:,} parameters, source-filter "
        f"{'on' if card['architecture']['source_filter'] else 'off'}",
        f"- preset `{card['preset']}`, {card['training'].get('steps')} distillation steps",
    ]
    if metrics:
        lines += [
            "",
            "## Evaluation (held-out test split)",
            "",
            "```",
            json.dumps(metrics, indent=2),
        ]
        lines += ["```"]
    data = card.get("data", {})
    if data.get("attribution"):
        lines += ["", "## Training data", "", data["attribution"].strip()]
    return "\n".join(lines) + "\n"


def _is_bundle(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def check_target(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but an earlier bundle: it is replaced whole."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if any(out.iterdir()) and not _is_bundle(out):
        raise UserError(
            f"{out} is not empty and not a distilwave bundle: refusing to replace it; "
            "choose another --out"
        )


def export_bundle(
    student_path: Path, out: Path, data_dir: Path | None = None, eval_json: Path | None = None
) -> Path:
    """Write the bundle for a trained student to ``out`` (atomically)."""
    check_target(out)
    student, preset, meta = load_student(student_path, torch.device("cpu"))
    metrics: dict[str, Any] = {}
    if eval_json is not None:
        if not eval_json.is_file():
            raise UserError(f"no evaluation report at {eval_json}")
        report = json.loads(eval_json.read_text())
        metrics = {
            k: report[k]
            for k in ("teacher", "student", "resynthesis", "teacher_samples", "speed")
            if k in report
        }
    data = _data_card(data_dir)
    card: dict[str, Any] = {
        "name": f"distilwave-{preset.name}",
        "version": VERSION,
        "preset": preset.name,
        "sample_rate": preset.mel.sample_rate,
        "hop_length": preset.mel.hop_length,
        "architecture": {
            "flows": preset.student.flows,
            "layers_per_flow": preset.student.wavenet.layers,
            "residual_channels": preset.student.wavenet.residual_channels,
            "parameters": int(sum(p.numel() for p in student.parameters())),
            "source_filter": preset.student.source_filter.enabled,
            "conditional": preset.student.conditional,
            "prior": preset.student.prior.model_dump() if preset.uses_prior else None,
        },
        "training": meta,
        "data": data,
        "metrics": metrics,
        "licence": "weights: trained on the data below; see its licence",
    }
    speakers = list(data.get("speakers") or []) if preset.student.n_speakers else []
    save_bundle(
        out,
        student,
        speakers=speakers,
        default_temperature=preset.evaluation.temperature,
        card=card,
        readme=_readme(card),
        audio=audio_convention(preset, data_dir),
    )
    log.info("bundle written to %s", out)
    return out
