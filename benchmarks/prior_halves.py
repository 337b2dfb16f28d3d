"""Where a bundle's mel-inversion prior loses: its magnitude or its phase.

    python -m benchmarks.prior_halves --bundle runs/<run>/bundle --data runs/<run>/data
        [--utterances 10] [--out FILE.json]

On the held-out test split, at the prior's own STFT (its n_fft, the mel's hop), the prior's
spectrum is recombined with the real audio's: the prior's magnitude with the true phase, the
true magnitude with the prior's phase, and Griffin-Lim iterations started from the prior's
phase on its magnitude. Each waveform is scored against the real audio (PESQ-NB, LSD, STOI,
MCD), beside the prior itself and the bundle's student at its default temperature (what it
serves); for each, where in frequency the LSD is lost (the RMS dB difference per band) and its
DC offset (mean sample value; the real audio's too). Writes a JSON report into
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import RESULTS, machine
from models.files import atomic_write_json
from models.prior import MelInversionPrior
from models.vocoder import load
from training.evaluation.metrics import all_metrics, band_errors

BANDS_HZ = [0.0, 32.0, 250.0, 1000.0, 2000.0, 3000.0, 24000.0]  # the last band ends at Nyquist


def recombinations(prior: MelInversionPrior, mel: Tensor, real: Tensor) -> dict[str, Tensor]:
    """Waveforms ``(T,)`` of the prior and of its spectrum recombined with ``real``'s."""
    n_fft, hop = prior.config.n_fft, prior.mel_config.hop_length
    window = prior.window

    def stft(x: Tensor) -> Tensor:
        return torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True)

    def istft(spectrum: Tensor) -> Tensor:  # the prior's own head: (M - 1) hop samples
        return prior.waveform(spectrum[None])[0]

    spectrum, _ = prior.spectrum(mel[None])
    spectrum = spectrum[0]
    length = (spectrum.shape[-1] - 1) * hop
    target = stft(real[:length])[..., : spectrum.shape[-1]]
    own_phase = spectrum / spectrum.abs().clamp_min(1e-8)
    true_phase = target / target.abs().clamp_min(1e-8)
    magnitude = spectrum.abs()
    iterated = magnitude * own_phase
    for _ in range(32):
        again = stft(istft(iterated))
        iterated = magnitude * again / again.abs().clamp_min(1e-8)
    return {
        "prior": istft(spectrum),
        "prior_magnitude_true_phase": istft(magnitude * true_phase),
        "true_magnitude_prior_phase": istft(target.abs() * own_phase),
        "prior_magnitude_griffin_lim_32_from_prior_phase": istft(iterated),
    }


def measure(bundle: Path, data: Path, utterances: int) -> dict[str, Any]:
    from training.data.dataset import UtteranceDataset

    vocoder = load(bundle)
    prior = vocoder.student.prior
    if prior is None:
        raise SystemExit(f"{bundle} has no mel-inversion prior")
    test = UtteranceDataset(data, "test", max_seconds=6.0, limit=utterances)
    if len(test) == 0:
        raise SystemExit(f"{data} has no test utterances")
    rate = vocoder.sample_rate
    student = vocoder.student
    edges = [edge for edge in BANDS_HZ if edge < rate / 2] + [rate / 2 + 1]
    labels = [
        f"{low:g}-{min(high, rate / 2):g} Hz" for low, high in zip(edges, edges[1:], strict=False)
    ]
    rows: dict[str, list[dict[str, float]]] = {}
    with torch.inference_mode():
        for index in range(len(test)):
            item = test[index]
            real = item["audio"].to(prior.window.dtype)
            outputs = recombinations(prior, item["mel"], real)
            context = student.context(mel=item["mel"][None])
            noise = student.draw_noise(context, vocoder.default_temperature)
            outputs["student"] = student.generate(context, noise=noise)[0]
            for name, audio in {"real": real, **outputs}.items():
                reference = real[: audio.shape[0]].numpy()
                row = {"dc_offset": float(audio.mean())}
                if name != "real":
                    row |= all_metrics(reference, audio.numpy(), rate)
                    bands = band_errors(reference, audio.numpy(), rate, edges)
                    row |= {
                        f"band_rms_db {label}": e for label, e in zip(labels, bands, strict=True)
                    }
                rows.setdefault(name, []).append(row)
    means = {
        name: {k: float(np.mean([r[k] for r in values])) for k in values[0]}
        for name, values in rows.items()
    }
    return {
        "machine": machine(),
        "bundle": str(bundle),
        "utterances": len(test),
        "student_temperature": vocoder.default_temperature,
        **means,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared corpus: its test split")
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = measure(args.bundle, args.data, args.utterances)
    out = args.out or RESULTS / f"prior-halves-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, report, sort_keys=False)
    for name, values in report.items():
        if isinstance(values, dict) and "pesq" in values:
            print(f"{name:<50} PESQ-NB {values['pesq']:.2f}  LSD {values['lsd_db']:.2f} dB")  # noqa: T201
    print(f"results: {out}")  # noqa: T201


if __name__ == "__main__":
    main()
