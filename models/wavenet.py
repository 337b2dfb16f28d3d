"""A WaveNet-style causal dilated stack: one layer loop for training, streaming and sampling.

Reference: van den Oord et al., "WaveNet: A Generative Model for Raw Audio" (2016); carried
left context as in Paine et al., "Fast Wavenet Generation Algorithm" (2016); one 1x1 map of the
conditioning into every layer's gate as in WaveGlow's ``WN``.

Every pass is **time-major**: a chunk of ``n`` samples of a batch of ``B`` is a ``(n B, C)``
row-major matrix, so the tap of dilation ``d`` is the same matrix ``d B`` rows earlier and every
convolution is a plain matrix product on contiguous rows (as fast to train here as ``Conv1d``,
measured, and the same code streams one sample or a whole clip). ``run_stack`` is that loop,
written once; it runs the module's own weights (``WaveNet.matrices``, differentiable views of
its ``Conv1d`` parameters) or the same weights folded for inference (``models.folding``).

The stack is causal *including* the current sample: output ``t`` depends on inputs ``<= t``;
conditioners that must read the strict past feed it their input delayed by one.
Conditioning frames are projected at frame rate and interpolated between frame centres
afterwards (both maps are linear, so this equals projecting every sample, ``hop`` times
cheaper); per-sample source channels are projected per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from models.config import WaveNetConfig

SEQUENTIAL_CONDITIONING = 512  # samples of gate inputs computed ahead when streaming few samples
MIN_ROWS = 16  # below about 12 rows a BLAS product's last bits depend on its row count


def conv(in_channels: int, out_channels: int, kernel: int, dilation: int, wn: bool) -> nn.Conv1d:
    """A ``Conv1d`` holding a layer's weights (``(out, in, K)``), weight-normalised when asked."""
    layer = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation)
    if wn:
        parametrizations.weight_norm(layer, name="weight", dim=0)
    return layer


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrisation in ``module`` by its plain weight, in place."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module


def tanh_gate(pre: Tensor) -> Tensor:
    """WaveNet's gated unit ``tanh(a) sigmoid(b)`` over the two halves of ``(rows, G)``."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


@dataclass
class GatedLayer:
    """One layer as matrices: ``pre = gate_input + sum_k tap_k(h) @ taps[k]``, then
    ``out = gate(pre) @ out (+ out_bias)``, split into residual and skip (the last: skip only)."""

    lags: list[int]  # lag in samples of each tap, oldest first: (K-1) d, ..., d, 0
    taps: list[Tensor]  # (R, G) per tap
    out: Tensor  # (G/2, R + S), or (G/2, S) for the last layer
    out_bias: Tensor | None  # (R + S,) or (S,); None when folded into the state
    history_init: Tensor | None  # (R,) the layer input before t = 0; None means zeros

    @property
    def span(self) -> int:
        return self.lags[0]


@dataclass
class StackMatrices:
    """A whole stack as matrices for ``run_stack``.

    ``gate_bias`` (``L G``) lands in every layer's gate input (with the conditioning);
    ``residual_scale`` multiplies ``h + residual`` after every layer but the last (``sqrt(1/2)``
    in the module; 1 once folded); ``skip_init`` starts the skip sum.
    """

    input: Tensor  # (I, R)
    input_bias: Tensor | None  # (R,)
    layers: list[GatedLayer]
    frame_weight: Tensor | None  # (C_frames, L G): conditioning frames
    source_weight: Tensor | None  # (C_source, L G): per-sample source channels
    gate_bias: Tensor  # (L G,)
    skip_init: Tensor | None  # (S,)
    hidden: tuple[Tensor, Tensor]  # (S, S), (S,)
    head: tuple[Tensor, Tensor]  # (S, O), (O,)
    residual_scale: float
    gate: Callable[[Tensor], Tensor]
    residual: int
    skip: int
    gate_channels: int


@dataclass
class StackState:
    """What a stream carries between chunks: each layer's last ``span`` input rows, and the
    conditioning projected at frame rate (and gate inputs computed ahead)."""

    histories: list[Tensor] = field(default_factory=list)  # (span B, R) per layer
    projected: Tensor | None = None  # (M, B, L G)
    ahead: tuple[int, int, Tensor] | None = None  # [start, stop) samples and (rows, L G)


@dataclass
class Conditioning:
    """What the stack reads besides its input: frame features ``(B, C, M)`` interpolated
    between centres ``hop`` samples apart, and per-sample source channels ``(B, S, T)``."""

    frames: Tensor | None
    source: Tensor | None
    hop: int


def rows_of(sequence: Tensor) -> Tensor:
    """``(B, C, n)`` -> time-major ``(n B, C)``."""
    return sequence.permute(2, 0, 1).reshape(-1, sequence.shape[1])


def interpolate_rows(frames: Tensor, t0: int, t1: int, hop: int) -> Tensor:
    """Time-major frames ``(M, B, C)`` -> rows ``((t1 - t0) B, C)``, linear between centres.

    Sample ``t`` sits at fractional frame ``t / hop``; frames past the last one repeat it.
    """
    _, batch, channels = frames.shape
    if t1 <= t0:
        return frames.new_zeros(0, channels)
    first, last = t0 // hop, (t1 - 1) // hop
    blocks = last - first + 1
    index = torch.arange(first, first + blocks + 1, device=frames.device)
    knots = frames.index_select(0, index.clamp_max(frames.shape[0] - 1))  # (blocks + 1, B, C)
    weight = (torch.arange(hop, dtype=frames.dtype, device=frames.device) / hop)[:, None, None]
    dense = torch.lerp(knots[:-1, None], knots[1:, None], weight)  # (blocks, hop, B, C)
    dense = dense.reshape(blocks * hop * batch, channels)
    offset = (t0 - first * hop) * batch
    return dense[offset : offset + (t1 - t0) * batch]


def _gate_inputs(
    m: StackMatrices, state: StackState, cond: Conditioning, t0: int, t1: int, batch: int,
    columns: slice,
) -> Tensor:  # fmt: skip
    """Gate inputs ``((t1 - t0) B, len(columns))`` of samples ``[t0, t1)``, a fresh tensor:
    the projected frames interpolated, plus the source channels projected, plus the biases."""
    dense: Tensor | None = None
    if state.projected is not None:
        dense = interpolate_rows(state.projected[..., columns], t0, t1, cond.hop)
    if m.source_weight is not None:
        if cond.source is None:
            raise ValueError("this stack reads per-sample source channels: none were given")
        source = rows_of(cond.source[..., t0:t1].to(m.source_weight.dtype))
        bias = dense if dense is not None else m.gate_bias[columns]
        dense = torch.addmm(bias, source, m.source_weight[:, columns])
    if dense is None:
        dense = m.gate_bias[columns].expand((t1 - t0) * batch, -1).clone()
    return dense


def _start(m: StackMatrices, state: StackState, cond: Conditioning, batch: int) -> None:
    """Zero (or folded-zero) histories and the conditioning projected at frame rate."""
    if not state.histories:
        for layer in m.layers:
            init = layer.history_init
            rows = layer.span * batch
            state.histories.append(
                m.input.new_zeros(rows, m.residual) if init is None else init.expand(rows, -1)
            )
    if state.projected is None and m.frame_weight is not None:
        if cond.frames is None:
            raise ValueError("this stack is conditional: conditioning frames are needed")
        frames = cond.frames.to(m.frame_weight.dtype).permute(2, 0, 1)  # (M, B, C)
        # BLAS picks other kernels for a handful of rows, and their last bits differ: pad to
        # MIN_ROWS so a clip's projection never depends on how many others share the product
        flat = frames.reshape(-1, frames.shape[-1])
        extra = flat.new_zeros(max(0, MIN_ROWS - flat.shape[0]), flat.shape[1])
        projected = torch.addmm(m.gate_bias, torch.cat([flat, extra]), m.frame_weight)
        state.projected = projected[: flat.shape[0]].reshape(*frames.shape[:2], -1)


def _sequential_gate_inputs(
    m: StackMatrices, state: StackState, cond: Conditioning, t0: int, steps: int, batch: int
) -> Tensor:
    """Every layer's gate inputs for a few samples, from a stretch computed ahead once."""
    known = state.ahead
    if known is None or t0 < known[0] or t0 + steps > known[1]:
        length = _clip_length(cond)
        stop = t0 + SEQUENTIAL_CONDITIONING if length is None else length
        stop = max(t0 + steps, min(stop, t0 + SEQUENTIAL_CONDITIONING))
        known = (t0, stop, _gate_inputs(m, state, cond, t0, stop, batch, slice(None)))
        state.ahead = known
    begin = (t0 - known[0]) * batch
    return known[2][begin : begin + steps * batch]


def _clip_length(cond: Conditioning) -> int | None:
    """Samples the conditioning describes (None if it does not say)."""
    if cond.source is not None:
        return int(cond.source.shape[-1])
    if cond.frames is not None:
        return (cond.frames.shape[-1] - 1) * cond.hop
    return None


def run_stack(
    m: StackMatrices,
    inputs: Tensor,
    cond: Conditioning,
    t0: int,
    batch: int,
    state: StackState | None = None,
) -> Tensor:
    """The stack over samples ``[t0, t0 + n)`` of a batch.

    Args:
        m: the stack's matrices (the module's, or folded).
        inputs: time-major ``(n B, I)``.
        cond: conditioning for the whole clip (sliced here).
        t0: absolute index of the first sample.
        batch: B.
        state: carried left context, updated in place; None means zeros before ``t0 = 0``.

    Returns:
        ``(n B, O)``; row ``t`` depends on inputs ``<= t`` only.
    """
    state = state if state is not None else StackState()
    _start(m, state, cond, batch)
    rows = inputs.shape[0]
    steps = rows // batch
    width, count = m.gate_channels, len(m.layers)
    inference = not torch.is_grad_enabled()
    # folded weights accumulate residual and skip in place into one (rows, R + S) buffer
    hs = (
        inputs.new_empty(rows, m.residual + m.skip)
        if inference and m.skip_init is not None
        else None
    )
    if hs is not None and m.skip_init is not None:
        h = torch.mm(inputs, m.input, out=hs[:, : m.residual])
        hs[:, m.residual :] = m.skip_init
    else:
        h = inputs @ m.input if m.input_bias is None else torch.addmm(m.input_bias, inputs, m.input)
    ahead = _sequential_gate_inputs(m, state, cond, t0, steps, batch) if steps < MIN_ROWS else None
    skip: Tensor | None = None
    for index, layer in enumerate(m.layers):
        columns = slice(index * width, (index + 1) * width)
        # the gate inputs: a slice of those computed ahead (not to be written), or fresh ones
        pre = ahead[:, columns] if ahead is not None else None
        if pre is None:
            pre = _gate_inputs(m, state, cond, t0, t0 + steps, batch, columns)
        writable = inference and ahead is None
        # rows of time t - lag: the carried history, then this chunk
        joined = torch.cat([state.histories[index], h])  # ((span + n) B, R)
        for lag, weight in zip(layer.lags, layer.taps, strict=True):
            start = (layer.span - lag) * batch
            tap = h if lag == 0 else joined[start : start + rows]
            pre = pre.addmm_(tap, weight) if writable else torch.addmm(pre, tap, weight)
            writable = inference
        state.histories[index] = joined[rows:]
        gated = m.gate(pre)
        last = index == count - 1
        if hs is not None:
            (hs[:, m.residual :] if last else hs).addmm_(gated, layer.out)
            continue
        if layer.out_bias is None:
            out = gated @ layer.out
        else:
            out = torch.addmm(layer.out_bias, gated, layer.out)
        if not last:
            residual, out = out.split([m.residual, m.skip], dim=1)
            h = (h + residual) * m.residual_scale
        skip = out if skip is None else skip + out
    if hs is not None:
        skip = hs[:, m.residual :]
    assert skip is not None
    weight, bias = m.hidden
    hidden = torch.relu(torch.addmm(bias, torch.relu(skip), weight))
    weight, bias = m.head
    return torch.addmm(bias, hidden, weight)


def _contiguous(m: StackMatrices) -> StackMatrices:
    """The same matrices laid out for BLAS (a tap of a ``(G, R, K)`` weight is strided both
    ways, and a product would copy it on every call)."""
    for layer in m.layers:
        layer.taps = [tap.contiguous() for tap in layer.taps]
        layer.out = layer.out.contiguous()
    m.input = m.input.contiguous()
    m.hidden = (m.hidden[0].contiguous(), m.hidden[1])
    m.head = (m.head[0].contiguous(), m.head[1])
    return m


class WaveNet(nn.Module):
    """Gated causal dilated convolutions with residual and skip paths (the parameters).

    Args:
        config: the stack's shape.
        in_channels: channels of the input sequence.
        out_channels: channels of the head's output (zero-initialised, so it starts at 0).
        frame_channels: conditioning channels at frame rate (0: none).
        source_channels: conditioning channels given per sample (0: none).

    The weights live in ``Conv1d`` modules (weight norm, state dicts); ``matrices`` views them
    as the time-major matrices ``run_stack`` multiplies.
    """

    def __init__(
        self,
        config: WaveNetConfig,
        in_channels: int,
        out_channels: int,
        frame_channels: int = 0,
        source_channels: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.frame_channels = frame_channels
        self.source_channels = source_channels
        res, gate, skip = config.residual_channels, config.gate_channels, config.skip_channels
        wn = config.weight_norm
        self.input_proj = conv(in_channels, res, 1, 1, wn)
        self.dilated = nn.ModuleList(
            conv(res, gate, config.kernel_size, d, wn) for d in config.dilations
        )
        last = config.layers - 1
        self.outputs = nn.ModuleList(
            conv(gate // 2, skip if i == last else res + skip, 1, 1, wn)
            for i in range(config.layers)
        )
        cond_channels = frame_channels + source_channels
        self.cond_projection = (
            conv(cond_channels, gate * config.layers, 1, 1, wn) if cond_channels > 0 else None
        )
        self.head_hidden = conv(skip, skip, 1, 1, wn)
        self.head_out = nn.Conv1d(skip, out_channels, 1, bias=True)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)  # type: ignore[arg-type]

    @property
    def in_channels(self) -> int:
        return self.input_proj.in_channels

    def matrices(self) -> StackMatrices:
        """The module's weights as ``run_stack`` matrices (views: gradients reach them).

        Without autograd they are kept until a parameter changes (its version moves), so a
        stream of one-sample calls does not rebuild them for every sample."""
        if torch.is_grad_enabled():
            return self._matrices()
        key = tuple((id(p), p._version, p.dtype) for p in self.parameters())
        cached = self.__dict__.get("_cached_matrices")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, _contiguous(self._matrices()))
            self.__dict__["_cached_matrices"] = cached
        return cached[1]

    def _matrices(self) -> StackMatrices:
        cfg = self.config
        gate = cfg.gate_channels
        layers = []
        for index, dilation in enumerate(cfg.dilations):
            weight = cast(nn.Conv1d, self.dilated[index]).weight  # (G, R, K)
            kernel = weight.shape[-1]
            out = cast(nn.Conv1d, self.outputs[index])
            layers.append(
                GatedLayer(
                    lags=[(kernel - 1 - j) * dilation for j in range(kernel)],
                    taps=[weight[:, :, j].T for j in range(kernel)],
                    out=out.weight[:, :, 0].T,
                    out_bias=out.bias,
                    history_init=None,
                )
            )
        gate_bias = torch.cat([layer.bias for layer in self.dilated])  # type: ignore[misc]
        frame_weight = source_weight = None
        if self.cond_projection is not None:
            projection = self.cond_projection.weight[:, :, 0].T  # (C, L G)
            gate_bias = gate_bias + self.cond_projection.bias  # type: ignore[operator]
            frames = self.frame_channels
            frame_weight = projection[:frames] if frames else None
            source_weight = projection[frames:] if self.source_channels else None
        return StackMatrices(
            input=self.input_proj.weight[:, :, 0].T,
            input_bias=self.input_proj.bias,
            layers=layers,
            frame_weight=frame_weight,
            source_weight=source_weight,
            gate_bias=gate_bias,
            skip_init=None,
            hidden=(self.head_hidden.weight[:, :, 0].T, self.head_hidden.bias),  # type: ignore[arg-type]
            head=(self.head_out.weight[:, :, 0].T, self.head_out.bias),  # type: ignore[arg-type]
            residual_scale=math.sqrt(0.5),
            gate=tanh_gate,
            residual=cfg.residual_channels,
            skip=cfg.skip_channels,
            gate_channels=gate,
        )

    def forward(
        self,
        inputs: Tensor,
        cond: Conditioning,
        t0: int = 0,
        batch: int = 1,
        state: StackState | None = None,
    ) -> Tensor:
        """``run_stack`` with this module's weights: ``(n B, I)`` -> ``(n B, O)``."""
        return run_stack(self.matrices(), inputs, cond, t0, batch, state)

    def flops_per_sample(self, hop: int) -> float:
        """Multiply-adds x 2 per generated sample (frame-rate conditioning shared by ``hop``)."""
        cfg = self.config
        res, gate, skip = cfg.residual_channels, cfg.gate_channels, cfg.skip_channels
        layers = cfg.layers
        outputs = (gate // 2) * ((res + skip) * (layers - 1) + skip)
        products = (
            self.in_channels * res
            + layers * cfg.kernel_size * res * gate
            + outputs
            + skip * skip
            + skip * self.head_out.out_channels
            + layers * gate * (self.source_channels + self.frame_channels / hop)
        )
        interpolation = 2 * layers * gate if self.frame_channels else 0  # a lerp per gate input
        return 2.0 * products + interpolation
