"""Presets: one YAML file per recipe in ``configs/``, validated here, overridable by ``--set``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from models.config import MelConfig, StrictModel, StudentConfig, TeacherConfig
from models.errors import UserError
from training.data.dataset import check_speed_range

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
Job = Literal["prior", "teacher", "student"]


class DataConfig(StrictModel):
    """How recordings become training data (``distilwave data prepare``)."""

    corpus: str = Field("asterisk", description="'asterisk' (the default corpus) or a folder")
    segment_samples: int = Field(4000, gt=0, description="training segment length in samples")
    trim_top_db: float = Field(40.0, gt=0, description="silence trim threshold below the peak")
    loudness_lufs: float = Field(-23.0, le=0, description="target integrated loudness (BS.1770)")
    peak_limit: float = Field(0.95, gt=0, le=1.0, description="maximum absolute sample value")
    min_seconds: float = Field(0.0, ge=0, description="drop clips shorter than this (and < 1 seg)")
    val_fraction: float = Field(0.05, ge=0, lt=1)
    test_fraction: float = Field(0.05, ge=0, lt=1)
    split_seed: int = 0
    shard_size: int = Field(64, gt=0, description="utterances per shard")
    workers: int = Field(2, ge=1)
    dequantize: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay, gradient clipping and an EMA."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)


class LoopConfig(StrictModel):
    """How long a training job runs and how often it reports, validates and saves."""

    steps: int = Field(1000, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop early at this wall time")
    batch_size: int = Field(8, gt=0)
    segment_samples: int | None = Field(None, gt=0, description="overrides data.segment_samples")
    log_every: int = Field(10, gt=0)
    validate_every: int = Field(200, gt=0)
    checkpoint_every: int = Field(200, gt=0)
    keep_checkpoints: int = Field(3, ge=1)
    val_utterances: int = Field(8, ge=1, description="held-out utterances per validation")
    val_max_seconds: float = Field(4.0, gt=0, description="crop validation utterances")
    num_workers: int = Field(1, ge=0)
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    compile: bool = False
    amp: bool = False
    max_bad_steps: int = Field(20, ge=1, description="consecutive non-finite losses before stop")


class TeacherTrainingConfig(StrictModel):
    optim: OptimConfig = OptimConfig()
    loop: LoopConfig = LoopConfig()
    sample_seconds: float = Field(0.25, ge=0, description="autoregressive audio sample length")
    input_noise: float = Field(
        0.0,
        ge=0,
        description="Gaussian noise added to the past the teacher reads while training, in units "
        "of the residual's RMS in each frame (LPCNet's robustness to its own samples); the "
        "likelihood is still of the clean x",
    )


class DistillationConfig(StrictModel):
    optim: OptimConfig = OptimConfig()
    loop: LoopConfig = LoopConfig()
    kl: Literal["closed", "mc"] = "closed"
    kl_weight: float = Field(1.0, ge=0)
    log_scale_weight: float = Field(4.0, ge=0)
    stft_weight: float = Field(1.0, ge=0)
    stft_ffts: tuple[int, ...] = (512, 256, 128)
    mean_stft_weight: float = Field(
        0.0, ge=0, description="MR-STFT of the student's T = 0 output (its deterministic path)"
    )
    dc_weight: float = Field(
        0.0, ge=0, description="the T = 0 output's DC offset against the real segment's"
    )
    temperature: float = Field(1.0, gt=0, description="z0 scale during distillation")
    train_prior: bool = Field(False, description="go on training the prior (else frozen)")


class PriorTrainingConfig(StrictModel):
    """The mel-inversion prior's job: mel L1 (HiFi-GAN) and multi-resolution STFT losses against
    the real segment, optionally a log-magnitude loss and APNet's anti-wrapped phase losses at
    the head's own STFT."""

    optim: OptimConfig = OptimConfig(betas=(0.8, 0.99), weight_decay=0.01)
    loop: LoopConfig = LoopConfig()
    mel_weight: float = Field(45.0, ge=0, description="L1 of the natural-log mel")
    stft_weight: float = Field(1.0, ge=0)
    stft_ffts: tuple[int, ...] = (512, 256, 128)
    mel_scales: tuple[tuple[int, int], ...] = Field(
        (),
        description="more (n_fft, n_mels) scales for the mel L1, hop n_fft / 4, averaged with "
        "the front end's (DAC's multi-scale mel loss); empty: the front end's mel only",
    )
    magnitude_weight: float = Field(0.0, ge=0, description="L2 of the head's log-magnitude")
    dc_weight: float = Field(0.0, ge=0, description="the waveform's DC offset against the real's")
    consistency_weight: float = Field(
        0.0, ge=0, description="APNet's STFT consistency: the head's spectrum against the STFT "
        "of its own waveform, relative to its norm",
    )  # fmt: skip
    phase_weight: float = Field(0.0, ge=0, description="APNet's anti-wrapped phase losses")
    phase_terms: tuple[Literal["instantaneous", "group_delay", "angular_frequency"], ...] = (
        "instantaneous",
        "group_delay",
        "angular_frequency",
    )
    phase_magnitude_weighted: bool = Field(False, description="weigh bins by target magnitude")
    phase_ffts: tuple[int, ...] = Field(
        (),
        description="more STFT sizes (hop n_fft / 4) at which the phase losses compare the "
        "prior's waveform with the real segment, averaged with the head's own; empty: the "
        "head's STFT only",
    )
    speed_range: tuple[float, float] | None = Field(
        None,
        description="play training segments at a random speed in [low, high] (pitch and "
        "formants scaled together), so the prior does not learn one voice; None: off",
    )

    @model_validator(mode="after")
    def _check_speed(self) -> Self:
        check_speed_range(self.speed_range)
        for n_fft, n_mels in self.mel_scales:
            if n_fft < 16 or not 1 <= n_mels <= n_fft // 2 + 1:
                raise ValueError(
                    f"prior_training.mel_scales: ({n_fft}, {n_mels}) needs n_fft >= 16 and "
                    f"1 <= n_mels <= n_fft / 2 + 1"
                )
        if any(n_fft < 16 for n_fft in self.phase_ffts):
            raise ValueError(
                f"prior_training.phase_ffts: every n_fft must be >= 16, got {list(self.phase_ffts)}"
            )
        return self


class EvaluationConfig(StrictModel):
    utterances: int = Field(10, ge=1)
    max_seconds: float = Field(6.0, gt=0)
    griffin_lim_iters: int = Field(32, ge=1)
    temperature: float = Field(1.0, ge=0)
    teacher_sample_seconds: float = Field(0.5, ge=0, description="teacher sample clip length")
    teacher_clips: int = Field(6, ge=1, description="test clips the teacher samples (a batch)")
    seed: int = 0


class Preset(StrictModel):
    """A whole recipe: data, front end, both models and every training job."""

    name: str
    description: str = ""
    mel: MelConfig = MelConfig()
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    prior_training: PriorTrainingConfig = PriorTrainingConfig()
    teacher_training: TeacherTrainingConfig = TeacherTrainingConfig()
    distillation: DistillationConfig = DistillationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _check(self) -> Self:
        hop = self.mel.hop_length
        for name, value in [
            ("data.segment_samples", self.data.segment_samples),
            ("prior_training.loop.segment_samples", self.prior_training.loop.segment_samples),
            ("teacher_training.loop.segment_samples", self.teacher_training.loop.segment_samples),
            ("distillation.loop.segment_samples", self.distillation.loop.segment_samples),
        ]:
            if value is not None and value % hop:
                raise ValueError(f"{name}={value} must be a multiple of hop_length {hop}")
        if self.student.upsampler != self.teacher.upsampler:
            raise ValueError("student.upsampler must equal teacher.upsampler (it starts from it)")
        if self.student.source_filter != self.teacher.source_filter:
            raise ValueError("student.source_filter must equal teacher.source_filter")
        if self.student.conditional != self.teacher.conditional:
            raise ValueError("student and teacher must both be conditional or both not")
        if self.student.prior != self.teacher.prior:
            raise ValueError("student.prior must equal teacher.prior (both use the one prior)")
        return self

    @property
    def uses_prior(self) -> bool:
        return self.student.prior.enabled

    def job_loop(self, job: Job) -> LoopConfig:
        """The loop settings of one training job."""
        jobs = {
            "prior": self.prior_training.loop,
            "teacher": self.teacher_training.loop,
            "student": self.distillation.loop,
        }
        return jobs[job]

    def job_optim(self, job: Job) -> OptimConfig:
        """The optimiser settings of one training job."""
        jobs = {
            "prior": self.prior_training.optim,
            "teacher": self.teacher_training.optim,
            "student": self.distillation.optim,
        }
        return jobs[job]

    def segment_samples(self, job: Job) -> int:
        return self.job_loop(job).segment_samples or self.data.segment_samples


class ConfigError(UserError, ValueError):
    """A preset that does not exist or does not validate; the message is one line."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not KEY=VALUE (e.g. teacher_training.loop.steps=50)"
        )
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    return path, yaml.safe_load(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict: ``["distillation.kl=mc"]``."""
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "preset"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def load_preset(name_or_path: str | Path, overrides: list[str] | None = None) -> Preset:
    """Load ``configs/NAME.yaml`` (or a YAML path), apply ``KEY=VALUE`` overrides, validate."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no preset {str(name_or_path)!r} (available: {', '.join(available_presets())})"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a preset must be a mapping")
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    return preset_from_dict(raw)


def preset_from_dict(raw: dict[str, Any]) -> Preset:
    try:
        return Preset.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid preset: {_one_line(exc)}") from exc
