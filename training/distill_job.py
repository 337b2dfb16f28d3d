"""Distillation: the student minimises KL(student || teacher) plus a spectral loss.

The teacher is frozen (eval mode, no parameter gradients) and not registered in the
objective, so DDP neither syncs nor saves it; gradients flow through the student's sample
into the teacher's conditionals. Both KL estimates are computed at every step and logged;
the one in the loss is chosen by ``distillation.kl``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from models.kl import closed_form_kl, log_scale_regulariser, mean_and_stderr, monte_carlo_kl
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from training.config import DistillationConfig, Preset
from training.data.dataset import SegmentDataset, UtteranceDataset
from training.distributed import DistInfo
from training.errors import UserError
from training.losses import multi_resolution_stft
from training.plots import spectrogram_figure
from training.teacher_job import check_corpus, model_context

log = logging.getLogger(__name__)


class DistillObjective(nn.Module):
    """Student loss = w_kl KL + w_ls (log s_student - log s_teacher)^2 + w_stft MR-STFT."""

    def __init__(
        self, student: IAFStudent, teacher: GaussianWaveNet, config: DistillationConfig
    ) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # frozen and deliberately unregistered
        self.config = config

    def terms(self, batch: dict[str, Tensor], temperature: float) -> dict[str, Tensor]:
        """Every loss term per sequence ``(B,)`` (KLs in nats/sample) plus the sample."""
        teacher: GaussianWaveNet = self.teacher  # type: ignore[assignment]
        real, mel, speaker = batch["audio"], batch["mel"], batch.get("speaker")
        conditional = self.student.config.conditional
        context = model_context(self.student, mel, speaker, real.shape[1], conditional)
        sample = self.student.sample(context, temperature=temperature)
        waveform = sample.waveform
        if not bool(torch.isfinite(waveform).all()):
            nan = waveform.sum() * float("nan")
            return {"loss": nan, "waveform": waveform}
        with torch.no_grad():
            teacher_context = model_context(teacher, mel, speaker, real.shape[1], conditional)
        mean_t, log_scale_t = teacher.conditionals(waveform, teacher_context)
        kl_closed = closed_form_kl(sample.mean, sample.log_scale, mean_t, log_scale_t)
        kl_mc = monte_carlo_kl(
            self.student.log_prob_of_sample(sample), waveform, mean_t, log_scale_t
        )
        return {
            "kl_closed": kl_closed,
            "kl_mc": kl_mc,
            "log_scale": log_scale_regulariser(sample.log_scale, log_scale_t),
            "waveform": waveform,
        }

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        terms = self.terms(batch, cfg.temperature)
        if "loss" in terms:
            return {"loss": terms["loss"]}
        convergence, magnitude = multi_resolution_stft(
            terms["waveform"], batch["audio"], cfg.stft_ffts
        )
        kl = terms["kl_closed"].mean() if cfg.kl == "closed" else terms["kl_mc"].mean()
        regulariser = terms["log_scale"].mean()
        loss = (
            cfg.kl_weight * kl
            + cfg.log_scale_weight * regulariser
            + cfg.stft_weight * (convergence + magnitude)
        )
        return {
            "loss": loss,
            "loss/kl_closed": terms["kl_closed"].mean().detach(),
            "loss/kl_mc": terms["kl_mc"].mean().detach(),
            "loss/log_scale": regulariser.detach(),
            "loss/stft_convergence": convergence.detach(),
            "loss/stft_log_magnitude": magnitude.detach(),
        }


def data_log_scale(data_dir: Path, segment_samples: int, batches: int = 8) -> float:
    """log of the training audio's standard deviation (the plain student's initial scale)."""
    dataset = SegmentDataset(data_dir, "train", segment_samples=segment_samples, seed=1234)
    values = torch.cat([dataset[i]["audio"] for i in range(min(len(dataset), batches * 8))])
    return math.log(float(values.std()) + 1e-8)


class DistillRecipe:
    """Builds the student from the frozen teacher and validates both KL estimates."""

    kind = "student"

    def __init__(
        self, preset: Preset, data_dir: Path, teacher: GaussianWaveNet, dist: DistInfo
    ) -> None:
        check_corpus(preset, data_dir)
        if teacher.mel_config != preset.mel:
            raise UserError(
                "the teacher was trained with a different mel front end than this preset"
            )
        if teacher.config.upsampler != preset.student.upsampler:
            raise UserError("the teacher's upsampler differs from student.upsampler in the preset")
        self.preset = preset
        self.dist = dist
        self.teacher = teacher.to(dist.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        student = IAFStudent(preset.student, preset.mel)
        student.upsampler.load_state_dict(teacher.upsampler.state_dict())
        if not preset.student.source_filter.enabled:
            gain = student.gain
            assert gain.log_scale is not None
            with torch.no_grad():
                gain.log_scale.fill_(data_log_scale(data_dir, preset.segment_samples("student")))
        self.model: nn.Module = student.to(dist.device)
        self.student = student
        self.objective: nn.Module = DistillObjective(student, self.teacher, preset.distillation)
        loop = preset.distillation.loop
        self.validation = UtteranceDataset(
            data_dir, "val", max_seconds=loop.val_max_seconds, limit=loop.val_utterances
        )
        self.history: list[tuple[int, float, float, float]] = []

    @torch.no_grad()
    def validate(
        self, model: nn.Module, step: int, writer: SummaryWriter | None
    ) -> dict[str, float]:
        assert isinstance(model, IAFStudent)
        objective = DistillObjective(model, self.teacher, self.preset.distillation)
        closed, mc, stft = [], [], []
        draws = 2
        torch.manual_seed(step)
        sample_audio = None
        for item in (self.validation[i] for i in range(len(self.validation))):
            batch = {
                "audio": item["audio"][None].repeat(draws, 1).to(self.dist.device),
                "mel": item["mel"][None].repeat(draws, 1, 1).to(self.dist.device),
                "speaker": item["speaker"].reshape(1).repeat(draws).to(self.dist.device),
            }
            terms = objective.terms(batch, 1.0)
            if "loss" in terms:
                return {"metric": float("inf"), "non_finite": 1.0}
            closed.append(terms["kl_closed"])
            mc.append(terms["kl_mc"])
            conv, mag = multi_resolution_stft(
                terms["waveform"], batch["audio"], self.preset.distillation.stft_ffts
            )
            stft.append(float(conv + mag))
            if sample_audio is None:
                sample_audio = (item["audio"], terms["waveform"][0].float().cpu())
        kl_closed, kl_closed_se = mean_and_stderr(torch.cat(closed))
        kl_mc, kl_mc_se = mean_and_stderr(torch.cat(mc))
        stft_mean = sum(stft) / len(stft)
        cfg = self.preset.distillation
        metric = cfg.kl_weight * kl_closed + cfg.stft_weight * stft_mean
        self.history.append((step, kl_closed, kl_mc, stft_mean))
        if writer is not None and sample_audio is not None:
            rate = self.preset.mel.sample_rate
            real, fake = sample_audio
            writer.add_audio("sample/student", fake.clamp(-1, 1)[None], step, sample_rate=rate)
            writer.add_audio("sample/real", real[None], step, sample_rate=rate)
            fig = spectrogram_figure({"real": real.numpy(), "student": fake.numpy()}, rate)
            writer.add_figure("spectrogram/student", fig, step)
        return {
            "kl_closed": kl_closed,
            "kl_closed_stderr": kl_closed_se,
            "kl_mc": kl_mc,
            "kl_mc_stderr": kl_mc_se,
            "stft": stft_mean,
            "metric": metric,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [(r[0], r[1], r[2], r[3]) for r in state.get("history", [])]
