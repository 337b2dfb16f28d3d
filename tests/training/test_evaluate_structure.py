"""The evaluation's structure-only baseline: the student's own flows with every network at zero."""

from __future__ import annotations

import torch

from tests.models.helpers import VARIANTS, make_student, random_mel
from training.evaluation.evaluate import _untrained_structure

MIX = next(v for v in VARIANTS if v.excitation)
SF = next(v for v in VARIANTS if v.name == "sf")


def test_students_without_mixed_excitation_get_no_structure_baseline():
    assert _untrained_structure(make_student(SF)) is None


def test_structure_baseline_is_the_trained_student_with_every_network_at_its_zero_start():
    trained = make_student(MIX)  # randomised weights: every flow and the voicing correction act
    structure = _untrained_structure(trained)
    assert structure is not None
    assert structure.config == trained.config
    context = structure.context(random_mel(2, 6, seed=3), batch=2)
    noise = structure.draw_noise(context, generator=torch.Generator().manual_seed(0))
    for step in structure.wavenet_steps:
        mean, log_scale, _ = step.conditioner(noise, context)
        assert torch.count_nonzero(mean) == 0 and torch.count_nonzero(log_scale) == 0
    excitation = structure.flows.step("excitation").conditioner
    assert torch.equal(
        excitation.frame_voicing(context),
        torch.sigmoid(torch.logit(context.voicing.clamp(1e-4, 1 - 1e-4))),
    )
    trained_out = trained.generate(trained.context(random_mel(2, 6, seed=3), batch=2), noise=noise)
    assert not torch.allclose(structure.generate(context, noise=noise), trained_out)
