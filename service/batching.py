"""Exact batching: stack per-request contexts and noise so each request's samples are
unchanged by the others.

Each request's ``Context`` is built alone (the upsampler's frame convolutions and linear
prediction see only that request's mel), then padded to the longest request: frames
``(1, C, M)`` and voicing ``(1, M)`` along M, filter blocks ``(1, N, ...)`` along N, and pitch
source ``(1, S, T)``, lag and pulses ``(1, T)`` along T by repeating the last one; noise with
zeros. Every student flow
is causal and per-sample, so sample ``t < T_i`` of request ``i`` reads only its own
conditioning at frames ``<= t / hop + 1`` and its own noise ``<= t``: the padding never
reaches it. The FIR flow's fast path is batch-invariant (``models.lpc.time_varying_fir``),
so the result is bit-identical to generating the request alone (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.conditioning import Context
from models.lpc import LinearPrediction


def _pad_repeat(values: Tensor, length: int, dim: int) -> Tensor:
    """Extend ``values`` to ``length`` along ``dim`` by repeating its last entry there."""
    extra = length - values.shape[dim]
    if extra <= 0:
        return values
    last = values.narrow(dim, values.shape[dim] - 1, 1)
    sizes = list(values.shape)
    sizes[dim] = extra
    return torch.cat([values, last.expand(*sizes)], dim=dim)


def _stack(parts: list[Tensor | None], what: str, dim: int) -> Tensor | None:
    """Single-request tensors padded along ``dim`` to the longest, stacked on the batch."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError(f"some requests have {what} and some do not")
    length = max(p.shape[dim] for p in present)
    return torch.cat([_pad_repeat(p, length, dim) for p in present], dim=0)


def stack_contexts(contexts: list[Context]) -> Context:
    """One batch ``Context`` from single-request contexts (each with ``batch == 1``)."""
    if not contexts:
        raise ValueError("no contexts to stack")
    if any(c.batch != 1 for c in contexts):
        raise ValueError("stack_contexts takes single-request contexts")
    hop = contexts[0].hop
    frames = _stack([c.frames for c in contexts], "conditioning frames", dim=2)  # (B, C, M)
    lpc = None
    if any(c.lpc is not None for c in contexts):
        lpcs = [c.lpc for c in contexts]
        if any(p is None for p in lpcs):
            raise ValueError("some requests have linear prediction and some do not")
        impulses = [p.impulse for p in lpcs if p is not None]
        coefficients = _stack([p.coefficients for p in lpcs if p is not None], "filters", 1)
        gain = _stack([p.gain for p in lpcs if p is not None], "gains", 1)
        assert coefficients is not None and gain is not None
        lpc = LinearPrediction(
            coefficients=coefficients,
            gain=gain,
            impulse=_stack(list(impulses), "impulse responses", 1),
        )
    return Context(
        batch=len(contexts),
        num_samples=max(c.num_samples for c in contexts),
        hop=hop,
        frames=frames,
        lpc=lpc,
        source=_stack([c.source for c in contexts], "pitch source", dim=2),  # (B, S, T)
        lag=_stack([c.lag for c in contexts], "pitch lag", dim=1),  # (B, T)
        pulses=_stack([c.pulses for c in contexts], "pitch pulses", dim=1),  # (B, T)
        voicing=_stack([c.voicing for c in contexts], "voicing", dim=1),  # (B, M)
    )


def stack_noise(noises: list[Tensor]) -> Tensor:
    """``(1, T_i)`` each -> ``(B, max T_i)``, zeros past each request's end."""
    length = max(n.shape[1] for n in noises)
    return torch.cat([F.pad(n, (0, length - n.shape[1])) for n in noises], dim=0)
