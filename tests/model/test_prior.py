"""Prior correction: the chosen offset is folded exactly into the classifier and never lowers validation mIoU."""

from __future__ import annotations

import pytest
import torch

from bev_service.model.prior import ALPHAS, alpha_scores, correct_prior
from bev_service.model.train import validate
from tests.model.conftest import TINY, procedural_source, tiny_model


def test_the_folded_correction_scores_what_was_chosen() -> None:
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.head.bias[6] += 4.0  # a network that over-predicts class 6, as a heavily weighted class does
    weights = torch.ones(8)
    weights[6] = float(torch.exp(torch.tensor(4.0)))  # log w_6 = 4: alpha 1 removes the bias exactly
    source = procedural_source(2, seed=4)
    before = alpha_scores(model, weights, source)
    assert set(before) == set(ALPHAS)
    head_before = model.head.bias.detach().clone()
    chosen = correct_prior(model, weights, source)
    alpha = chosen["alpha"]
    assert before[alpha] == max(before.values()) and before[alpha] >= before[0.0]
    torch.testing.assert_close(model.head.bias, head_before - alpha * torch.log(weights))
    # The folded network scores what alpha_scores promised, through the runtime's own segmenter.
    assert validate(model, TINY, source)["miou"] == pytest.approx(before[alpha], abs=1e-4)  # the report rounds


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="positive class weights"):
        correct_prior(tiny_model(), torch.zeros(8), procedural_source(1))
    with pytest.raises(ValueError, match="positive class weights"):
        correct_prior(tiny_model(), torch.ones(5), procedural_source(1))
