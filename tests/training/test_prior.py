"""Prior correction: the chosen offsets are folded exactly into the classifier and never lower validation mIoU."""

from __future__ import annotations

import pytest
import torch

from bev_service.training.data import ArraySource, resized
from bev_service.training.prior import (
    ALPHAS,
    OFFSET_RANGE,
    OFFSET_ROUNDS,
    alpha_scores,
    class_offsets,
    correct_prior,
    validation_logits,
)
from bev_service.training.train import validate
from tests.networks import TINY, TINY_SIZE_HW, procedural_source, tiny_model


def test_the_folded_correction_scores_what_was_chosen() -> None:
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.head.bias[6] += 4.0  # a network that over-predicts class 6, as a heavily weighted class does
    weights = torch.ones(8)
    weights[6] = float(torch.exp(torch.tensor(4.0)))  # log w_6 = 4: alpha 1 removes the bias exactly
    source = procedural_source(2, seed=4)
    before = alpha_scores(*validation_logits(model, source), weights)
    assert set(before) == set(ALPHAS)
    head_before = model.head.bias.detach().clone()
    chosen = correct_prior(model, weights, source)
    alpha = chosen["alpha"]
    assert before[alpha] == max(before.values()) and before[alpha] >= before[0.0]
    offsets = torch.tensor(chosen["class_offsets"])
    assert offsets[0] == 0.0 and bool((offsets.abs() <= OFFSET_RANGE * OFFSET_ROUNDS).all())
    torch.testing.assert_close(model.head.bias, head_before - alpha * torch.log(weights) + offsets, atol=1e-4, rtol=0)
    # The folded network scores what was promised, through the runtime's own segmenter, and no less than alpha alone.
    assert validate(model, TINY, source)["miou"] == pytest.approx(chosen["val_miou"], abs=1e-4)  # the report rounds
    assert chosen["val_miou"] >= before[alpha] - 1e-4


def test_alpha_only_folds_exactly_the_alpha() -> None:
    model = tiny_model(seed=3)
    weights = torch.linspace(1.0, 20.0, 8)
    head_before = model.head.bias.detach().clone()
    chosen = correct_prior(model, weights, procedural_source(1, seed=4), per_class=False)
    assert "class_offsets" not in chosen
    torch.testing.assert_close(model.head.bias, head_before - chosen["alpha"] * torch.log(weights))


def test_class_offsets_find_an_under_predicted_class() -> None:
    # Perfect logits for 3 classes, then class 2's logit pushed down by 0.5: it loses the pixels where
    # its lead was under 0.5. The ascent must give exactly that back and recover the lost IoU.
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16), generator=gen, dtype=torch.uint8)
    lead = torch.rand(2, 16, 16, generator=gen)  # how far the true class leads, in [0, 1)
    logits = torch.zeros(2, 3, 16, 16)
    logits.scatter_(1, labels.long()[:, None], lead[:, None])
    logits[:, 2] -= 0.5
    labels[0, 0, 0] = 255  # unlabelled pixels are left out
    offsets, miou = class_offsets(logits, labels)
    assert offsets[0] == 0.0 and offsets[1] == 0.0
    assert float(offsets[2]) == 0.5
    assert miou == pytest.approx(1.0)


def test_class_offsets_stay_put_when_nothing_gains() -> None:
    labels = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    logits = torch.nn.functional.one_hot(labels.long(), 2).permute(0, 3, 1, 2).float() * 5.0  # already perfect
    offsets, miou = class_offsets(logits, labels)
    assert miou == 1.0 and bool((offsets == 0).all())


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="positive class weights"):
        correct_prior(tiny_model(), torch.zeros(8), procedural_source(1))
    with pytest.raises(ValueError, match="positive class weights"):
        correct_prior(tiny_model(), torch.ones(5), procedural_source(1))


def test_validation_sets_of_several_image_sizes_are_scored_at_the_input_size() -> None:
    """Random rigs render at their own sizes: their frame sets are resized to the network's input first."""
    same = procedural_source(1, seed=4)[0]
    other = resized(procedural_source(1, seed=5)[0], (TINY_SIZE_HW[0] + 8, TINY_SIZE_HW[1] - 16))
    mixed = ArraySource([same, other])
    with pytest.raises(ValueError, match="different sizes"):
        validation_logits(tiny_model(seed=3), mixed)
    logits, labels = validation_logits(tiny_model(seed=3), mixed, TINY_SIZE_HW)
    assert logits.shape[2:] == labels.shape[1:] == TINY_SIZE_HW and len(labels) == 8
    model = tiny_model(seed=3)
    chosen = correct_prior(model, torch.linspace(1.0, 20.0, 8), mixed, size_hw=TINY_SIZE_HW)
    # validate scores the resized frame set's prediction scaled back up to its own labels: within a hair of it
    assert validate(model, TINY, mixed)["miou"] == pytest.approx(chosen["val_miou"], abs=0.01)
