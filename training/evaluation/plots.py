"""Figures a person can look at: log-spectrograms side by side, learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def log_spectrogram(waveform: np.ndarray, n_fft: int = 512) -> np.ndarray:
    """dB magnitude spectrogram ``(n_fft // 2 + 1, frames)`` with a Hann window, hop n_fft/4."""
    hop = n_fft // 4
    padded = np.pad(waveform.astype(np.float64), (n_fft // 2, n_fft // 2), mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(padded[index] * np.hanning(n_fft), axis=-1)).T
    return 20.0 * np.log10(np.maximum(spectrum, 1e-5))


def spectrogram_figure(
    waveforms: dict[str, np.ndarray], sample_rate: int, title: str = ""
) -> Figure:
    """One row per waveform, shared colour scale (dB), time and frequency axes labelled."""
    rows = len(waveforms)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.1 * rows), sharex=True, squeeze=False)
    specs = {name: log_spectrogram(w) for name, w in waveforms.items()}
    top = max(float(s.max()) for s in specs.values())
    for axis, (name, spec) in zip(axes[:, 0], specs.items(), strict=True):
        duration = spec.shape[1] * 128 / sample_rate
        image = axis.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - 80.0,
            vmax=top,
            extent=(0.0, duration, 0.0, sample_rate / 2000.0),
        )
        axis.set_ylabel("kHz")
        axis.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.025)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def curves_figure(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> Figure:
    """Line plot of named ``(x, y)`` series."""
    fig, axis = plt.subplots(figsize=(7, 3.5))
    for name, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, label=name)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
