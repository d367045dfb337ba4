"""Pruning: fewer channels in multiples of 8, the same output shape, and a weights-only file that rebuilds it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bev_service.errors import ModelError
from bev_service.runtime.enet import default_channels
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.runtime.weights import load_model, save_model
from bev_service.training.config import PruneConfig
from bev_service.training.prune import ROUND_TO, kept_layers, prune_network, run_pruning
from tests.networks import TINY, TINY_SIZE_HW, procedural_source, random_images, tiny_model

HALF = replace(TINY, width=0.5)  # wide enough that every group has channels to lose


def flat_counts(table: dict) -> dict[str, int]:
    return {f"{k}[{i}]": c for k, v in table.items() for i, c in enumerate(v if isinstance(v, list) else [v])}


def test_pruning_removes_channels_in_multiples_of_8_and_keeps_the_output(tmp_path: Path) -> None:
    model = tiny_model(config=HALF)
    calls: list[int] = []
    prune_network(model, TINY_SIZE_HW, ratio=0.5, iterative_steps=2, after_step=calls.append)
    assert calls == [0, 1]
    before, after = flat_counts(default_channels(0.5)), flat_counts(model.channel_spec())
    assert all(after[k] <= before[k] for k in before)
    assert after["stage2[0]"] < before["stage2[0]"] and after["stage1[0]"] < before["stage1[0]"]
    assert all(c % ROUND_TO == 0 and c >= ROUND_TO for c in after.values())
    assert sum(after.values()) < 0.75 * sum(before.values())
    assert model.head.out_channels == HALF.num_classes
    images = random_images(2)
    labels = TorchSegmenter(model, HALF, device="cpu").segment(images).labels
    assert labels.shape == (2, *TINY_SIZE_HW) and labels.dtype == torch.uint8

    path = tmp_path / "pruned.pt"
    save_model(path, model, HALF)
    torch.load(path, weights_only=True)  # nothing but tensors and plain values
    loaded = load_model(path)
    assert loaded.config.channels == model.channel_spec()
    again = TorchSegmenter(loaded.model, loaded.config, device="cpu").segment(images).labels
    assert torch.equal(again, labels)


def test_no_layer_is_emptied_at_a_high_ratio() -> None:
    model = tiny_model(config=HALF)
    prune_network(model, TINY_SIZE_HW, ratio=0.9, iterative_steps=1, after_step=lambda k: None)
    assert min(flat_counts(model.channel_spec()).values()) == ROUND_TO
    with torch.no_grad():
        assert model(torch.rand(1, 3, *TINY_SIZE_HW)).shape == (1, HALF.num_classes, *TINY_SIZE_HW)


def test_kept_layers_keep_their_channels_and_those_tied_to_them() -> None:
    """``--keep initial``: the initial block keeps its 16 channels, and so does the half-resolution decoder, which
    its skip ties to it (stage 5's trunk, read from the classifier's input); everything else is pruned."""
    model = tiny_model(config=replace(TINY, width=1.0))
    before = flat_counts(model.channel_spec())
    kept = kept_layers(model, "initial")
    prune_network(model, TINY_SIZE_HW, ratio=0.5, iterative_steps=1, after_step=lambda k: None, keep=kept)
    after = flat_counts(model.channel_spec())
    assert after["initial[0]"] == before["initial[0]"] == 16 and model.head.in_channels == 16
    assert after["stage1[0]"] < before["stage1[0]"] and after["stage2[0]"] < before["stage2[0]"]
    assert after["stage2.1[0]"] < before["stage2.1[0]"]
    with pytest.raises(ModelError, match=r"cannot keep 'stage9': not a convolution of the network \(its layers: initial, "):
        kept_layers(model, "initial, stage9")
    assert kept_layers(model, "") == [] and kept_layers(model, "stage1.0.reduce") == [model.stage1[0].reduce.conv]


def test_run_pruning_fine_tunes_and_reports_before_and_after(tmp_path: Path) -> None:
    source = procedural_source(6)
    model_path, out = tmp_path / "model.pt", tmp_path / "pruned.pt"
    save_model(model_path, tiny_model(config=HALF), HALF)
    config = PruneConfig(
        model=str(model_path),
        out=str(out),
        ratio=0.5,
        iterative_steps=2,
        finetune_steps=3,
        final_finetune_steps=2,
        batch_size=4,
        crop_height=0,
        crop_width=0,
        latency_repeats=2,
        progress=False,
    )
    report = run_pruning(config, source, procedural_source(1, seed=9))
    assert report["after"]["params"] < report["before"]["params"]
    assert report["macs_ratio"] > 1.5 and report["params_ratio"] > 1.5
    assert report["cpu_speedup"] > 0 and "miou_drop" in report
    assert report["finetune_steps_run"] == [3, 5]  # the last step also trains the pruned network on
    assert report["prior_correction"]["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert json.loads(out.with_suffix(".json").read_text())["macs_ratio"] == report["macs_ratio"]
    loaded = load_model(out)
    assert loaded.info["pruned_from"] == str(model_path)
    labels = TorchSegmenter(loaded.model, loaded.config, device="cpu").segment(random_images(1)).labels_numpy()
    assert labels.shape == (1, *TINY_SIZE_HW) and np.all(labels < 8)
