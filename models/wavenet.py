"""A WaveNet-style causal dilated stack, run in parallel, in chunks, or one sample at a time.

Reference: van den Oord et al., "WaveNet: A Generative Model for Raw Audio" (2016); the
incremental queues follow Paine et al., "Fast Wavenet Generation Algorithm" (2016).

Tensors are ``(B, C, T)`` and every layer is a native ``Conv1d`` (measured here: about 3x
faster to train than the same maths as channel-last matrix products). The stack is causal
*including* the current sample: output ``t`` depends on inputs ``<= t``. Callers that need a
strictly autoregressive conditioner shift their input by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from models.config import WaveNetConfig


def conv(in_channels: int, out_channels: int, kernel: int, dilation: int, wn: bool) -> nn.Conv1d:
    """A ``Conv1d`` (no padding: callers pad causally), weight-normalised when asked."""
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


@dataclass
class WaveNetQueues:
    """Per-layer ring buffers of past layer inputs for one-sample-at-a-time use.

    ``buffers[l]`` is ``(B, R, (K-1) d_l)``: the input of layer ``l`` at time ``s`` lives at
    column ``s mod (K-1) d_l``; zeros stand for the padding before t = 0. ``matrices`` holds
    each layer's weights reshaped once for matrix-vector products.
    """

    buffers: list[Tensor]
    matrices: dict[str, list[tuple[Tensor, Tensor]]]
    t: int = 0


@dataclass
class WaveNetStream:
    """Left context carried between chunks: the last ``(K-1) d_l`` inputs of every layer."""

    context: list[Tensor] = field(default_factory=list)


def _matrix(layer: nn.Conv1d) -> tuple[Tensor, Tensor]:
    """``(out, in, K)`` conv weight -> ``(out, K * in)``, tap k in columns ``[k in, (k+1) in)``."""
    weight = layer.weight.detach()
    out_channels = weight.shape[0]
    bias = layer.bias.detach() if layer.bias is not None else weight.new_zeros(out_channels)
    return weight.permute(0, 2, 1).reshape(out_channels, -1), bias


class WaveNet(nn.Module):
    """Gated causal dilated convolutions with residual and skip paths.

    Args:
        config: the stack's shape.
        in_channels: channels of the input sequence.
        out_channels: channels of the head's output (zero-initialised, so it starts at 0).
        cond_channels: channels of the per-sample conditioning (0: unconditional).

    Conditioning enters every layer's gate through one 1x1 map to ``G * layers`` channels
    (WaveGlow's ``WN``), applied per layer so the full projection is never materialised.
    """

    def __init__(
        self, config: WaveNetConfig, in_channels: int, out_channels: int, cond_channels: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        res, gate, skip = config.residual_channels, config.gate_channels, config.skip_channels
        wn = config.weight_norm
        self.gate_half = gate // 2
        self.input_proj = conv(in_channels, res, 1, 1, wn)
        self.dilated = nn.ModuleList(
            conv(res, gate, config.kernel_size, d, wn) for d in config.dilations
        )
        last = config.layers - 1
        self.outputs = nn.ModuleList(
            conv(self.gate_half, skip if i == last else res + skip, 1, 1, wn)
            for i in range(config.layers)
        )
        self.cond_projection = (
            conv(cond_channels, gate * config.layers, 1, 1, wn) if cond_channels > 0 else None
        )
        self.head_hidden = conv(skip, skip, 1, 1, wn)
        self.head_out = nn.Conv1d(skip, out_channels, 1, bias=True)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)  # type: ignore[arg-type]

    def _layer_cond(self, index: int, cond: Tensor) -> Tensor:
        """Layer ``index``'s slice of the conditioning projection: ``(B, C, T) -> (B, G, T)``."""
        assert self.cond_projection is not None
        width = self.config.gate_channels
        weight = self.cond_projection.weight[index * width : (index + 1) * width]
        bias = self.cond_projection.bias
        return F.conv1d(
            cond, weight, None if bias is None else bias[index * width : (index + 1) * width]
        )

    def _gate(self, pre: Tensor, dim: int) -> Tensor:
        a, b = pre.split(self.gate_half, dim=dim)  # G -> 2 x G/2
        return torch.tanh(a) * torch.sigmoid(b)

    def _head(self, skip: Tensor) -> Tensor:
        return self.head_out(torch.relu(self.head_hidden(torch.relu(skip))))

    def forward(
        self, inputs: Tensor, cond: Tensor | None = None, stream: WaveNetStream | None = None
    ) -> Tensor:
        """Run the stack over a whole sequence or the next chunk of one.

        Args:
            inputs: ``(B, in_channels, T)``.
            cond: per-sample conditioning ``(B, cond_channels, T)`` or None.
            stream: carried left context; None means zeros before t = 0. Updated in place.

        Returns:
            ``(B, out_channels, T)``; output ``t`` depends on inputs ``<= t`` only.
        """
        cfg = self.config
        if (cond is None) != (self.cond_projection is None):
            raise ValueError("conditioning must be given exactly when the stack is conditional")
        h = self.input_proj(inputs)
        steps = h.shape[-1]
        skip: Tensor | None = None
        new_context: list[Tensor] = []
        for index, dilation in enumerate(cfg.dilations):
            span = (cfg.kernel_size - 1) * dilation
            if stream is not None and stream.context:
                full = torch.cat([stream.context[index], h], dim=-1)  # (B, R, span + T)
            else:
                full = F.pad(h, (span, 0))
            if stream is not None:
                new_context.append(full[..., full.shape[-1] - span :])
            pre = self.dilated[index](full)  # (B, G, T)
            if cond is not None:
                pre = pre + self._layer_cond(index, cond)
            out = self.outputs[index](self._gate(pre, dim=1))
            if index < cfg.layers - 1:
                residual, s = out.split([cfg.residual_channels, cfg.skip_channels], dim=1)
                h = (h + residual) * math.sqrt(0.5)
            else:
                s = out
            skip = s if skip is None else skip + s
        if stream is not None:
            stream.context = new_context
        assert skip is not None and skip.shape[-1] == steps
        return self._head(skip)

    def project_cond(self, cond: Tensor) -> Tensor:
        """All layers' conditioning at once: ``(B, C, T) -> (B, G * layers, T)`` (for ``step``)."""
        assert self.cond_projection is not None
        projected: Tensor = self.cond_projection(cond)
        return projected

    @torch.no_grad()
    def start_queues(self, batch: int, like: Tensor) -> WaveNetQueues:
        """Empty queues (zeros = the padding before t = 0) and reshaped weights for ``step``."""
        cfg = self.config
        buffers = [
            like.new_zeros(batch, cfg.residual_channels, (cfg.kernel_size - 1) * d)
            for d in cfg.dilations
        ]
        matrices = {
            "dilated": [_matrix(layer) for layer in self.dilated],  # type: ignore[arg-type]
            "outputs": [_matrix(layer) for layer in self.outputs],  # type: ignore[arg-type]
            "input": [_matrix(self.input_proj)],
            "head": [_matrix(self.head_hidden), _matrix(self.head_out)],
        }
        return WaveNetQueues(buffers=buffers, matrices=matrices)

    @torch.no_grad()
    def step(self, inputs: Tensor, cond: Tensor | None, queues: WaveNetQueues) -> Tensor:
        """One new sample in O(layers) work: ``(B, in_channels) -> (B, out_channels)``.

        Args:
            inputs: the new input sample ``(B, in_channels)``.
            cond: this sample's *projected* conditioning ``(B, G * layers)`` (see
                ``project_cond``) or None.
            queues: from ``start_queues``; advanced by one sample.

        Equal to the last output of ``forward`` over the whole history.
        """
        cfg = self.config
        m = queues.matrices
        t = queues.t
        weight, bias = m["input"][0]
        h = torch.addmm(bias, inputs, weight.T)  # (B, R)
        skip: Tensor | None = None
        width = cfg.gate_channels
        for index, dilation in enumerate(cfg.dilations):
            buffer = queues.buffers[index]
            size = buffer.shape[-1]
            past = [
                buffer[..., (t - j * dilation) % size] for j in range(cfg.kernel_size - 1, 0, -1)
            ]
            taps = torch.cat([*past, h], dim=-1)  # (B, K R), oldest tap first
            buffer[..., t % size] = h
            weight, bias = m["dilated"][index]
            pre = torch.addmm(bias, taps, weight.T)  # (B, G)
            if cond is not None:
                pre = pre + cond[:, index * width : (index + 1) * width]
            weight, bias = m["outputs"][index]
            out = torch.addmm(bias, self._gate(pre, dim=-1), weight.T)
            if index < cfg.layers - 1:
                residual, s = out.split([cfg.residual_channels, cfg.skip_channels], dim=-1)
                h = (h + residual) * math.sqrt(0.5)
            else:
                s = out
            skip = s if skip is None else skip + s
        queues.t = t + 1
        assert skip is not None
        (w1, b1), (w2, b2) = m["head"]
        hidden = torch.addmm(b1, torch.relu(skip), w1.T)
        return torch.addmm(b2, torch.relu(hidden), w2.T)
