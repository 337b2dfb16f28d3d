"""Generic checks every flow step passes (zuko's ``test_flows``): shapes, invertibility,
log-det against the autograd Jacobian, gradients to every parameter, direction handling."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd.functional import jacobian

from models.flows import AffineAutoregressive, Conditioner
from tests.models.helpers import (
    VARIANTS,
    make_context,
    make_student,
    make_teacher,
    random_signal,
)

# (variant, which step) pairs covering every kind of step: teacher MAF (plain, source-filter,
# pitch), student WaveNet IAF (with and without pitch), gain (learned and from LPC), FIR
# synthesis.
STEP_CASES = [
    (VARIANTS[0], "teacher"),
    (VARIANTS[2], "teacher"),
    (VARIANTS[4], "teacher"),
    (VARIANTS[5], "teacher"),
    (VARIANTS[0], "student-wavenet"),
    (VARIANTS[3], "student-wavenet"),
    (VARIANTS[5], "student-wavenet"),
    (VARIANTS[0], "student-gain"),
    (VARIANTS[4], "student-gain"),
    (VARIANTS[4], "student-synthesis"),
    (VARIANTS[6], "teacher"),
    (VARIANTS[7], "teacher"),
    (VARIANTS[6], "student-wavenet"),
    (VARIANTS[7], "student-wavenet"),
]
STEP_IDS = [f"{kind}-{variant.name}" for variant, kind in STEP_CASES]
EVERY_STEP = pytest.mark.parametrize("variant,kind", STEP_CASES, ids=STEP_IDS)
PARAMETRISED_STEPS = pytest.mark.parametrize(
    "variant,kind",
    [case for case in STEP_CASES if case[1] in ("teacher", "student-wavenet")]
    + [(VARIANTS[0], "student-gain")],
    ids=lambda value: getattr(value, "name", value),
)


def _step(variant, kind, batch=2, frames=3, weight_norm=False):
    """The flow step, its context (built with gradients) and an input of matching shape."""
    if kind == "teacher":
        model = make_teacher(variant, weight_norm=weight_norm, std=0.2)
        flow = model.flow
    else:
        model = make_student(variant, weight_norm=weight_norm)
        name = {"student-wavenet": "wavenet_1", "student-gain": "gain"}.get(kind, "synthesis")
        flow = model.flows.step(name)
    context = make_context(model, variant, batch=batch, frames=frames)
    return model, flow, context, random_signal(context, seed=21)


@functools.cache
def _jacobian_case(variant, kind):
    model, flow, context, u = _step(variant, kind, batch=1)

    def forward(value):
        # The cached MAF sampler runs without autograd (inference only): differentiate the
        # naive sequential pass, which is the same function.
        return flow(value, context, cached=False).output[0]

    return flow, context, u, jacobian(forward, u)[:, 0]  # (T, T)


@EVERY_STEP
def test_step_forward_and_inverse_shapes(variant, kind):
    _, flow, context, u = _step(variant, kind)
    for result in (flow(u, context), flow.inverse(u, context)):
        assert result.output.shape == u.shape
        assert result.mean.shape == u.shape
        assert result.log_scale.shape == u.shape
        assert result.logabsdet.shape == (u.shape[0],)


@EVERY_STEP
def test_step_inverse_undoes_forward(variant, kind):
    _, flow, context, u = _step(variant, kind)
    x = flow(u, context).output
    torch.testing.assert_close(flow.inverse(x, context).output, u, rtol=0, atol=1e-10)


@EVERY_STEP
def test_step_forward_undoes_inverse(variant, kind):
    _, flow, context, x = _step(variant, kind)
    u = flow.inverse(x, context).output
    torch.testing.assert_close(flow(u, context).output, x, rtol=0, atol=1e-10)


@EVERY_STEP
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "naive"])
def test_step_sequential_direction_matches_parallel_direction(variant, kind, cached):
    # The sequential direction (MAF forward, IAF inverse) in both its cached and naive forms
    # must produce the means and log-scales the parallel direction computes from the result.
    _, flow, context, u = _step(variant, kind)
    if flow.direction == "maf":
        sequential = flow(u, context, cached=cached)
        parallel = flow.inverse(sequential.output, context)
    else:
        sequential = flow.inverse(u, context, cached=cached)
        parallel = flow(sequential.output, context)
    torch.testing.assert_close(sequential.mean, parallel.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(sequential.log_scale, parallel.log_scale, rtol=0, atol=1e-12)


@EVERY_STEP
def test_step_forward_logabsdet_equals_autograd_slogdet(variant, kind):
    flow, context, u, jac = _jacobian_case(variant, kind)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(flow(u, context).logabsdet[0], expected, rtol=0, atol=1e-10)


@EVERY_STEP
def test_step_inverse_logabsdet_is_minus_the_forward_one(variant, kind):
    _, flow, context, u = _step(variant, kind)
    forward = flow(u, context)
    inverse = flow.inverse(forward.output, context)
    torch.testing.assert_close(inverse.logabsdet, -forward.logabsdet, rtol=0, atol=1e-10)


@EVERY_STEP
def test_step_jacobian_is_lower_triangular(variant, kind):
    *_, jac = _jacobian_case(variant, kind)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))


@PARAMETRISED_STEPS
@pytest.mark.parametrize("weight_norm", [False, True], ids=["no-wn", "wn"])
def test_step_gradient_reaches_every_parameter_of_its_conditioner(variant, kind, weight_norm):
    _, flow, context, u = _step(variant, kind, weight_norm=weight_norm)
    # The parallel direction is the training path: density (x -> u) for a MAF, sampling for IAF.
    result = flow.inverse(u, context) if flow.direction == "maf" else flow(u, context)
    (result.output.square().sum() + result.logabsdet.sum()).backward()
    missing = [
        name
        for name, p in flow.named_parameters()
        if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert list(flow.parameters()), "this case was meant to have parameters"
    assert missing == []


def test_affine_step_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        AffineAutoregressive(Conditioner(), "forward")  # type: ignore[arg-type]
