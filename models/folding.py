"""The WaveNet's weights folded for fast CPU inference: same maths, fewer and cheaper kernels.

``fold`` rewrites a trained stack's matrices once (in float64, then cast back) so that
``models.wavenet.run_stack`` runs it with

* **biases folded.** With ``s = sqrt(1/2)`` the module computes ``h_{l+1} = s (h_l + res_l)``.
  Writing ``h_l = s^l (g_l + k_l)`` with constant ``k_l`` makes the update ``g_{l+1} = g_l +
  (W_res / s^l) gate`` (an in-place accumulate, residual scale 1) and moves every bias into the
  gate input of the next layers; zero padding before t = 0 becomes ``g = -k_l`` there;
* **a cheaper gate.** ``tanh(a) = 2 sigmoid(2 a) - 1`` (PyTorch's CPU sigmoid is about 4x faster
  than its tanh): the ``a`` half of every gate input is doubled, the gate computes
  ``(sigmoid(a') - 1/2) sigmoid(b)`` = gate / 2 in place, and the output weights are doubled.

It is the same stack: ``run_stack`` with folded matrices equals the module within float
rounding (tested), and the layer loop is the module's own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.wavenet import GatedLayer, StackMatrices, WaveNet


def sigmoid_gate(pre: Tensor) -> Tensor:
    """Half the gated unit, in place: ``(sigmoid(a') - 1/2) sigmoid(b)`` with ``a' = 2 a``."""
    activated = pre.sigmoid_()
    half = activated.shape[1] // 2
    return activated[:, :half].sub_(0.5).mul_(activated[:, half:])


@torch.no_grad()
def fold(net: WaveNet) -> StackMatrices:
    """The folded matrices of ``net`` (see the module docstring), in ``net``'s dtype."""
    reference = net.matrices()
    dtype = reference.input.dtype
    cfg = net.config
    scale = math.sqrt(0.5)
    res, gate, skip = cfg.residual_channels, cfg.gate_channels, cfg.skip_channels
    gate_scale = torch.ones(gate, dtype=torch.float64)
    gate_scale[: gate // 2] = 2.0  # the a half

    def f64(tensor: Tensor | None, size: int = 0) -> Tensor:
        if tensor is None:
            return torch.zeros(size, dtype=torch.float64)
        return tensor.detach().to(torch.float64)

    constant = f64(reference.input_bias, res)  # k_0
    gate_bias = f64(reference.gate_bias).reshape(cfg.layers, gate).clone()
    skip_init = torch.zeros(skip, dtype=torch.float64)
    layers: list[GatedLayer] = []
    for index, layer in enumerate(reference.layers):
        level = scale**index
        taps = [f64(w) * level for w in layer.taps]  # (R, G): h = s^l (g + k)
        gate_bias[index] += sum(t.T @ constant for t in taps)  # every tap reads g + k
        out, out_bias = f64(layer.out) * 2.0, f64(layer.out_bias, layer.out.shape[1])
        history = -constant.clone()
        if index < cfg.layers - 1:
            out[:, :res] /= level
            skip_init += out_bias[res:]
            constant = constant + out_bias[:res] / level
        else:
            skip_init += out_bias
        layers.append(
            GatedLayer(
                lags=list(layer.lags),
                taps=[(t * gate_scale).to(dtype).contiguous() for t in taps],
                out=out.to(dtype).contiguous(),
                out_bias=None,
                history_init=history.to(dtype),
            )
        )
    layer_scale = gate_scale.repeat(cfg.layers)

    def gate_weight(weight: Tensor | None) -> Tensor | None:
        if weight is None:
            return None
        return (f64(weight) * layer_scale).to(dtype).contiguous()

    hidden_weight, hidden_bias = reference.hidden
    head_weight, head_bias = reference.head
    return StackMatrices(
        input=f64(reference.input).to(dtype).contiguous(),
        input_bias=None,
        layers=layers,
        frame_weight=gate_weight(reference.frame_weight),
        source_weight=gate_weight(reference.source_weight),
        gate_bias=(gate_bias.reshape(-1) * layer_scale).to(dtype),
        skip_init=skip_init.to(dtype),
        hidden=(hidden_weight.detach().contiguous(), hidden_bias.detach()),
        head=(head_weight.detach().contiguous(), head_bias.detach()),
        residual_scale=1.0,
        gate=sigmoid_gate,
        residual=res,
        skip=skip,
        gate_channels=gate,
    )
