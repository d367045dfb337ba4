"""The ENet builder: shapes at several sizes, argument checks, and the channel table round trip."""

from __future__ import annotations

import pytest
import torch

from bev_service.runtime.enet import default_channels, enet, fold_batch_norms
from bev_service.runtime.model_config import INPUT_MULTIPLE


@pytest.mark.parametrize("size_hw", [(64, 96), (32, 40), (8, 8), (48, 200)])
@pytest.mark.parametrize("batch", [1, 3])
def test_logits_have_the_input_size_and_one_channel_per_class(size_hw: tuple[int, int], batch: int) -> None:
    model = enet(num_classes=5, width=0.25).eval()
    x = torch.rand(batch, 3, *size_hw)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (batch, 5, *size_hw)
    assert logits.dtype == torch.float32
    assert all(s % INPUT_MULTIPLE == 0 for s in size_hw)


def test_input_is_not_modified() -> None:
    model = enet(num_classes=3, width=0.25).eval()
    x = torch.rand(1, 3, 16, 24)
    before = x.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5])
def test_channel_spec_reads_back_the_default_table(width: float) -> None:
    model = enet(num_classes=8, width=width)
    assert model.channel_spec() == default_channels(width)
    counts = [v for value in default_channels(width).values() for v in (value if isinstance(value, list) else [value])]
    assert all(c % 8 == 0 for c in counts)


def test_a_custom_channel_table_builds_that_architecture_and_loads_its_weights() -> None:
    table = default_channels(0.5)
    table["stage2"] = 40
    table["stage2.3"] = [8, 16, 24]
    model = enet(num_classes=4, width=0.5, channels=table)
    assert model.channel_spec() == table
    rebuilt = enet(num_classes=4, channels=model.channel_spec())
    rebuilt.load_state_dict(model.state_dict())  # strict: every tensor has the same shape
    with torch.no_grad():
        assert torch.equal(model.eval()(torch.ones(1, 3, 16, 16)), rebuilt.eval()(torch.ones(1, 3, 16, 16)))


def test_prelu_variant_runs() -> None:
    model = enet(num_classes=3, width=0.25, activation="prelu").eval()
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"num_classes": 8, "width": 0.0}, "width must be positive"),
        ({"num_classes": 8, "activation": "gelu"}, "activation must be"),
        ({"num_classes": 8, "dropout": 1.0}, "dropout must be in"),
        ({"num_classes": 8, "channels": {"initial": 13}}, "missing"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        enet(**kwargs)


def test_a_channel_entry_of_the_wrong_shape_is_refused() -> None:
    table = default_channels(0.25)
    table["stage2.3"] = [8, 8]  # an asymmetric block needs three counts
    with pytest.raises(ValueError, match=r"stage2\.3"):
        enet(num_classes=8, channels=table)


def test_folding_batch_norms_keeps_the_function_and_leaves_the_model_alone() -> None:
    model = enet(num_classes=6, width=0.5, activation="prelu")
    with torch.no_grad():
        for m in model.modules():  # statistics and affine terms far from the identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert batch_norms == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_folded_classes_are_called_background_in_the_output() -> None:
    torch.manual_seed(0)
    model = enet(num_classes=8, width=0.25, folded=1).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        every = model.head_logits(x)  # the folded channel's bias set so that it wins about half the pixels
        model.head.bias[8] += (every[:, :8].amax(dim=1) - every[:, 8]).median() + 1e-3  # no exact ties
        every, out = model.head_logits(x), model(x)
    assert every.shape == (2, 9, 32, 48) and out.shape == (2, 8, 32, 48)
    torch.testing.assert_close(out[:, 1:], every[:, 1:8])
    torch.testing.assert_close(out[:, 0], torch.maximum(every[:, 0], every[:, 8]))
    full = every.argmax(dim=1)
    assert (full == 8).any() and (full != 8).any()
    torch.testing.assert_close(out.argmax(dim=1), torch.where(full == 8, 0, full))
    plain = enet(num_classes=8, width=0.25)
    assert plain.head.out_channels == 8 and plain.folded == 0
    with pytest.raises(ValueError, match="folded"):
        enet(num_classes=8, folded=-1)
