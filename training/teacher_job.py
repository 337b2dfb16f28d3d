"""Teacher training: maximum likelihood of real segments under the Gaussian WaveNet (MAF)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from models.conditioning import Context
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from models.transforms import bits_per_sample
from training.checkpoint import CheckpointManager, load_checkpoint
from training.config import Preset, preset_from_dict
from training.data.dataset import PreparedCorpus, UtteranceDataset
from training.distributed import DistInfo
from training.errors import UserError
from training.plots import spectrogram_figure

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


def model_context(
    model: GaussianWaveNet | IAFStudent,
    mel: Tensor,
    speaker: Tensor | None,
    num_samples: int,
    conditional: bool,
) -> Context:
    """The context of a training batch for either model (teacher or student)."""
    return model.context(
        mel=mel if conditional else None,
        num_samples=None if conditional else num_samples,
        speaker=speaker if model.config.n_speakers > 0 else None,
        batch=mel.shape[0],
    )


class TeacherObjective(nn.Module):
    """Negative log-likelihood in nats per sample (what DDP wraps)."""

    def __init__(self, model: GaussianWaveNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["audio"]
        context = model_context(
            self.model,
            batch["mel"],
            batch.get("speaker"),
            x.shape[1],
            self.model.config.conditional,
        )
        nll = -self.model.log_prob(x, context).mean() / x.shape[1]
        return {"loss": nll, "train/bits": bits_per_sample(nll.detach())}


@torch.no_grad()
def utterance_bits(
    model: GaussianWaveNet, items: list[dict[str, Any]], device: torch.device
) -> float:
    """Bits/sample of the teacher on whole utterances (total NLL over total samples)."""
    total, count = 0.0, 0
    for item in items:
        x = item["audio"][None].to(device)
        context = model_context(
            model,
            item["mel"][None].to(device),
            item["speaker"].reshape(1).to(device),
            x.shape[1],
            model.config.conditional,
        )
        total += float(-model.log_prob(x, context).sum())
        count += x.shape[1]
    return float(bits_per_sample(total / count))


class TeacherRecipe:
    """Builds the teacher and validates it on held-out whole utterances (bits/sample)."""

    kind = "teacher"

    def __init__(self, preset: Preset, data_dir: Path, dist: DistInfo) -> None:
        corpus = check_corpus(preset, data_dir)
        if preset.teacher.n_speakers and preset.teacher.n_speakers < len(corpus.speakers):
            raise UserError(
                f"the corpus has {len(corpus.speakers)} speakers; set teacher.n_speakers and "
                f"student.n_speakers to at least that"
            )
        self.preset = preset
        self.dist = dist
        teacher = GaussianWaveNet(preset.teacher, preset.mel).to(dist.device)
        self.model: nn.Module = teacher
        self.objective: nn.Module = TeacherObjective(teacher)
        loop = preset.teacher_training.loop
        self.validation = UtteranceDataset(
            data_dir, "val", max_seconds=loop.val_max_seconds, limit=loop.val_utterances
        )
        self.history: list[tuple[int, float]] = []

    def validate(
        self, model: nn.Module, step: int, writer: SummaryWriter | None
    ) -> dict[str, float]:
        assert isinstance(model, GaussianWaveNet)
        items = [self.validation[i] for i in range(len(self.validation))]
        bits = utterance_bits(model, items, self.dist.device)
        self.history.append((step, bits))
        seconds = self.preset.teacher_training.sample_seconds
        if writer is not None and seconds > 0 and items:
            self._write_sample(model, items[0], seconds, step, writer)
        return {"bits": bits, "metric": bits}

    def _write_sample(
        self,
        model: GaussianWaveNet,
        item: dict[str, Any],
        seconds: float,
        step: int,
        writer: SummaryWriter,
    ) -> None:
        """A short autoregressive sample (slow by nature) next to the real audio."""
        hop = self.preset.mel.hop_length
        frames = max(2, int(seconds * self.preset.mel.sample_rate) // hop + 1)
        mel = item["mel"][None, :, :frames].to(self.dist.device)
        real = item["audio"][: (mel.shape[-1] - 1) * hop]
        context = model_context(
            model,
            mel,
            item["speaker"].reshape(1).to(self.dist.device),
            real.shape[0],
            model.config.conditional,
        )
        generator = torch.Generator(device=self.dist.device).manual_seed(step)
        sample = model.sample(context, generator=generator)[0].float().cpu()
        rate = self.preset.mel.sample_rate
        writer.add_audio("sample/teacher", sample.clamp(-1, 1)[None], step, sample_rate=rate)
        writer.add_audio("sample/real", real[None], step, sample_rate=rate)
        fig = spectrogram_figure({"real": real.numpy(), "teacher sample": sample.numpy()}, rate)
        writer.add_figure("spectrogram/teacher", fig, step)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


def load_teacher(path: Path, device: torch.device) -> GaussianWaveNet:
    """The EMA teacher from a checkpoint file or a teacher run directory (its best.pt)."""
    if path.is_dir():
        manager = CheckpointManager(path / "checkpoints", keep=1)
        if manager.best_path.is_file():
            path = manager.best_path
        else:
            found = manager.latest()
            if found is None:
                raise UserError(f"{path} holds no teacher checkpoint")
            path = found[0]
    if not path.is_file():
        raise UserError(f"no teacher checkpoint at {path}")
    state = load_checkpoint(path)
    if state.get("kind") != "teacher":
        raise UserError(f"{path} is a {state.get('kind')} checkpoint, not a teacher")
    preset = preset_from_dict(state["config"]["preset"])
    model = GaussianWaveNet(preset.teacher, preset.mel)
    model.load_state_dict(state["ema"]["shadow"])
    log.info("loaded teacher (EMA) from %s, step %d", path, state["step"])
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
