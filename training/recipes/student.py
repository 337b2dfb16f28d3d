"""The student's recipe: distillation from the frozen teacher (reverse KL plus spectral loss,
``training.objectives.distillation``), validated with both KL estimates on held-out audio."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from models.errors import UserError
from models.kl import mean_and_stderr
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from training.config import Preset
from training.data.dataset import SegmentDataset, UtteranceDataset
from training.evaluation.plots import spectrogram_figure
from training.loop.distributed import DistInfo
from training.objectives.distillation import DistillObjective, distillation_terms
from training.objectives.spectral import multi_resolution_stft
from training.recipes.common import check_corpus

log = logging.getLogger(__name__)


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
        if student.prior is not None:
            if teacher.prior is None:
                raise UserError("this student shifts by the prior: its teacher has none")
            # the same trained prior as the teacher's, frozen unless the preset trains it on
            student.prior.load_state_dict(teacher.prior.state_dict())
            student.prior.requires_grad_(preset.distillation.train_prior)
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
            terms = distillation_terms(model, self.teacher, batch, 1.0)
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
