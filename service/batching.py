"""Exact batching: stack per-request contexts and noise so each request's samples are
unchanged by the others.

Each request's ``Context`` is built alone (the upsampler's frame convolutions and linear
prediction see only that request's mel), then padded to the longest request: frames along
M and filter blocks along N by repeating the last one, noise with zeros. Every student flow
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


def _pad_repeat(values: Tensor, length: int) -> Tensor:
    """Extend ``(1, L, ...)`` to ``(1, length, ...)`` along dim 1 by repeating the last entry."""
    extra = length - values.shape[1]
    if extra <= 0:
        return values
    last = values[:, -1:].expand(values.shape[0], extra, *values.shape[2:])
    return torch.cat([values, last], dim=1)


def _stack(parts: list[Tensor | None], what: str) -> Tensor | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError(f"some requests have {what} and some do not")
    length = max(p.shape[1] for p in present)
    return torch.cat([_pad_repeat(p, length) for p in present], dim=0)


def stack_contexts(contexts: list[Context]) -> Context:
    """One batch ``Context`` from single-request contexts (each with ``batch == 1``)."""
    if not contexts:
        raise ValueError("no contexts to stack")
    if any(c.batch != 1 for c in contexts):
        raise ValueError("stack_contexts takes single-request contexts")
    hop = contexts[0].hop
    frames = _stack([c.frames for c in contexts], "conditioning frames")
    lpc = None
    if any(c.lpc is not None for c in contexts):
        lpcs = [c.lpc for c in contexts]
        if any(p is None for p in lpcs):
            raise ValueError("some requests have linear prediction and some do not")
        impulses = [p.impulse for p in lpcs if p is not None]
        coefficients = _stack([p.coefficients for p in lpcs if p is not None], "filters")
        gain = _stack([p.gain for p in lpcs if p is not None], "gains")
        assert coefficients is not None and gain is not None
        lpc = LinearPrediction(
            coefficients=coefficients,
            gain=gain,
            impulse=_stack(list(impulses), "impulse responses"),
        )
    return Context(
        batch=len(contexts),
        num_samples=max(c.num_samples for c in contexts),
        hop=hop,
        frames=frames,
        lpc=lpc,
    )


def stack_noise(noises: list[Tensor]) -> Tensor:
    """``(1, T_i)`` each -> ``(B, max T_i)``, zeros past each request's end."""
    length = max(n.shape[1] for n in noises)
    return torch.cat([F.pad(n, (0, length - n.shape[1])) for n in noises], dim=0)
