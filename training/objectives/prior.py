"""The mel-inversion prior's objective: its waveform against the real segment.

Mel L1 (natural-log mel, HiFi-GAN's weight 45) plus the multi-resolution STFT distance, and
optionally: the DC offset against the real segment's; APNet's STFT consistency (the head's
spectrum against its own waveform re-analysed); at the head's own STFT (frames whose
target sees reflect padding left out), the log-magnitude L2 and APNet's anti-wrapped phase
losses, the latter also at more STFT sizes (``phase_ffts``) on the waveform re-analysed. No
adversary: on a CPU budget a GAN has ~10^3 steps where it needs 10^5 (docs/architecture.md,
measurements).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.config import MelConfig
from models.mel import MelFrontEnd
from models.prior import MelInversionPrior
from training.config import PriorTrainingConfig
from training.objectives.spectral import (
    complex_stft,
    consistency_distance,
    dc_distance,
    log_mel_distance,
    multi_resolution_stft,
    phase_losses,
)


def mel_scale_front_ends(
    mel: MelConfig, scales: tuple[tuple[int, int], ...]
) -> tuple[MelFrontEnd, ...]:
    """The front ends of ``prior_training.mel_scales``: ``(n_fft, n_mels)``, hop ``n_fft / 4``,
    the corpus's rate and band (only the log-mel's differences count, so the offset is moot)."""
    fields = mel.model_dump(exclude={"win_length"})
    return tuple(
        MelFrontEnd(MelConfig(**{**fields, "n_fft": n, "hop_length": n // 4, "n_mels": mels}))
        for n, mels in scales
    )


def prior_terms(
    prior: MelInversionPrior, batch: dict[str, Tensor], config: PriorTrainingConfig,
    front_end: MelFrontEnd, scales: tuple[MelFrontEnd, ...] = (),
) -> dict[str, Tensor]:  # fmt: skip
    """Every loss term (scalars) and the weighted ``loss``; ``scales``: more mel front ends
    whose log-mel L1 is averaged with ``front_end``'s."""
    audio, mel = batch["audio"], batch["mel"]
    spectrum, log_magnitude = prior.spectrum(mel)
    waveform = prior.waveform(spectrum)
    audio = audio[:, : waveform.shape[1]]
    mel_distances = [log_mel_distance(waveform, audio, fe) for fe in (front_end, *scales)]
    terms = {"mel": torch.stack(mel_distances).mean()}
    convergence, magnitude = multi_resolution_stft(waveform, audio, config.stft_ffts)
    terms["stft"] = convergence + magnitude
    loss = config.mel_weight * terms["mel"] + config.stft_weight * terms["stft"]
    if config.dc_weight:  # the DC offset, which no STFT loss resolves (spectral.dc_distance)
        terms["dc"] = dc_distance(waveform, audio)
        loss = loss + config.dc_weight * terms["dc"]
    n_fft, hop = prior.config.n_fft, prior.mel_config.hop_length
    edge = n_fft // 2 // hop  # frames whose window reaches the reflect padding
    inner = slice(edge, spectrum.shape[-1] - edge)
    if config.consistency_weight:  # the head's frames against its own waveform re-analysed
        again = torch.stft(
            waveform, n_fft, hop, window=prior.window.to(waveform.dtype), center=True,
            return_complex=True,
        )  # fmt: skip
        terms["consistency"] = consistency_distance(spectrum[..., inner], again[..., inner])
        loss = loss + config.consistency_weight * terms["consistency"]
    if config.magnitude_weight or config.phase_weight:
        target = torch.stft(
            audio, n_fft, hop, window=prior.window.to(audio.dtype), center=True,
            return_complex=True,
        )  # fmt: skip
        if config.magnitude_weight:
            log_target = torch.log(target[..., inner].abs().clamp_min(1e-5))
            terms["magnitude"] = (log_magnitude[..., inner] - log_target).square().mean()
            loss = loss + config.magnitude_weight * terms["magnitude"]
        if config.phase_weight:
            phases = [phase_losses(
                spectrum[..., inner], target[..., inner], config.phase_terms,
                config.phase_magnitude_weighted,
            )]  # fmt: skip
            for size in config.phase_ffts:  # the waveform re-analysed at more resolutions
                predicted, real = (complex_stft(x, size) for x in (waveform, audio))
                kept = slice(2, real.shape[-1] - 2)  # windows clear of the reflect padding
                phases.append(phase_losses(
                    predicted[..., kept], real[..., kept], config.phase_terms,
                    config.phase_magnitude_weighted,
                ))  # fmt: skip
            terms["phase"] = torch.stack(phases).mean()
            loss = loss + config.phase_weight * terms["phase"]
    terms["loss"] = loss
    return terms


class PriorObjective(nn.Module):
    """The prior's training loss (what DDP wraps); the front end is fixed, not trained."""

    def __init__(
        self, prior: MelInversionPrior, config: PriorTrainingConfig, mel: MelConfig
    ) -> None:
        super().__init__()
        self.prior = prior
        self.config = config
        object.__setattr__(self, "front_end", MelFrontEnd(mel))  # no parameters, not saved
        object.__setattr__(self, "scales", mel_scale_front_ends(mel, config.mel_scales))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        front_end: MelFrontEnd = self.front_end  # type: ignore[assignment]
        scales: tuple[MelFrontEnd, ...] = self.scales  # type: ignore[assignment]
        for module in (front_end, *scales):
            module.to(batch["audio"].device)
        terms = prior_terms(self.prior, batch, self.config, front_end, scales)
        return {"loss": terms["loss"], **{f"loss/{k}": v.detach() for k, v in terms.items()
                                          if k != "loss"}}  # fmt: skip
