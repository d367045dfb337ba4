"""The vehicle's own body learnt as a class of its own (``--body separate``) that the network folds into
background: trained, prior-corrected, pruned, exported and quantized like any network, with the output classes
of every other one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bev_service.classes import CLASS_NAMES
from bev_service.errors import ModelError
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.runtime.weights import load_model
from bev_service.training.config import OWN_BODY, PruneConfig
from bev_service.training.data import ArraySource, FrameSet
from bev_service.training.export import export_onnx
from bev_service.training.prior import correct_prior
from bev_service.training.prune import run_pruning
from bev_service.training.quantize import quantize_onnx
from bev_service.training.train import train
from tests.networks import TINY_SIZE_HW, procedural_source
from tests.training.test_train import tiny_run

BODY_COLOUR = (250, 0, 250)  # a colour no procedural class has: only the body class can explain it


def with_body(source: ArraySource) -> ArraySource:
    """``source`` with a sill along the bottom rows of every camera, painted ``BODY_COLOUR`` and labelled
    background, as the renderer labels the body."""
    frames = []
    for i in range(len(source)):
        f = source[i]
        body = np.zeros(f.labels.shape, dtype=bool)
        body[:, -16:] = True
        images, labels = f.images.copy(), f.labels.copy()
        images[body], labels[body] = BODY_COLOUR, 0
        frames.append(FrameSet(images=images, labels=labels, body=body, name=f.name))
    return ArraySource(frames)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("separate")
    config = tiny_run(out, steps=60, eval_every=60, checkpoint_every=60, body="separate")
    return train(config, with_body(procedural_source(12, seed=1)), with_body(procedural_source(2, seed=2)))


def test_the_body_class_is_trained_but_never_output(trained: Path) -> None:
    loaded = load_model(trained)
    assert loaded.config.folded_classes == (OWN_BODY,) and loaded.config.class_names == CLASS_NAMES
    model = loaded.model
    assert model.head.out_channels == len(CLASS_NAMES) + 1
    frame_set = with_body(procedural_source(1, seed=5))[0]
    x = torch.from_numpy(frame_set.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        every = model.head_logits(x).argmax(dim=1)
    assert (every[torch.from_numpy(frame_set.body)] == len(CLASS_NAMES)).float().mean() > 0.9, "the body class was learnt"
    labels = TorchSegmenter(model, loaded.config, device="cpu").segment(frame_set.images).labels_numpy()
    np.testing.assert_array_equal(labels, np.where(every.numpy() == len(CLASS_NAMES), 0, every.numpy()))
    assert (labels[frame_set.body] == 0).mean() > 0.9, "folded into background"


def test_the_prior_correction_moves_the_body_class_with_background() -> None:
    config = ModelConfig(width=0.25, input_size_hw=TINY_SIZE_HW, folded_classes=(OWN_BODY,))
    torch.manual_seed(0)
    model = config.build().eval()
    before = model.head.bias.detach().clone()
    weights = torch.linspace(2.0, 40.0, config.head_classes)  # every class its own weight, background too (moved: -log 2)
    chosen = correct_prior(model, weights, with_body(procedural_source(2, seed=2)), alphas=(1.0,))
    moved = model.head.bias.detach() - before
    assert chosen["alpha"] == 1.0 and len(chosen["class_offsets"]) == len(CLASS_NAMES)
    assert float(moved[0]) == pytest.approx(-float(np.log(2.0)))
    assert float(moved[len(CLASS_NAMES)]) == pytest.approx(float(moved[0])), "the body's contest with background kept"
    assert not torch.allclose(moved[1 : len(CLASS_NAMES)], moved[:1].expand(len(CLASS_NAMES) - 1))
    with pytest.raises(ValueError, match="expected 9 positive class weights"):
        correct_prior(model, weights[: len(CLASS_NAMES)], with_body(procedural_source(1, seed=2)))


def test_pruning_keeps_the_body_class_and_needs_the_same_body_rule(trained: Path, tmp_path: Path) -> None:
    def prune(body: str) -> dict:
        config = PruneConfig(
            model=str(trained), out=str(tmp_path / f"pruned-{body}.pt"), ratio=0.5, iterative_steps=1, finetune_steps=3,
            batch_size=4, crop_height=0, crop_width=0, latency_repeats=1, progress=False, body=body,
        )  # fmt: skip
        return run_pruning(config, with_body(procedural_source(4, seed=1)), with_body(procedural_source(1, seed=2)))

    with pytest.raises(ModelError, match="training-only classes"):
        prune("ignore")
    report = prune("separate")
    assert report["after"]["params"] < report["before"]["params"]
    pruned = load_model(tmp_path / "pruned-separate.pt")
    assert pruned.config.folded_classes == (OWN_BODY,) and pruned.model.head.out_channels == len(CLASS_NAMES) + 1


def test_the_graphs_output_the_classes_and_keep_the_folding_float(trained: Path, tmp_path: Path) -> None:
    loaded = load_model(trained)
    graph = export_onnx(loaded.model, loaded.config, tmp_path / "separate.onnx")
    int8 = quantize_onnx(graph, tmp_path / "separate-int8.onnx", with_body(procedural_source(2, seed=3))[0].images)
    images = with_body(procedural_source(1, seed=5))[0].images
    reference = TorchSegmenter(loaded.model, loaded.config, device="cpu").segment(images).labels_numpy()
    exported = OnnxSegmenter(graph).segment(images).labels
    assert (exported == reference).mean() > 0.999
    assert (np.asarray(OnnxSegmenter(int8).segment(images).labels) == exported).mean() > 0.95, "int8 labels as float"
    nodes = onnx.load(str(int8)).graph
    producers = {out: node for node in nodes.node for out in node.output}
    argmax = next(n for n in nodes.node if n.op_type == "ArgMax")
    fold = producers[argmax.input[0]]
    assert fold.op_type == "Concat" and all(producers[i].op_type != "DequantizeLinear" for i in fold.input), (
        "the folded logits were rounded to 8 bits"
    )
    slices = {i for n in nodes.node if n.op_type == "Slice" for i in n.input}
    head = next(n for n in nodes.node if n.op_type == "ConvTranspose" and n.output[0] in slices)  # the folding reads it
    initializers = {t.name: t for t in nodes.initializer}
    assert numpy_helper.to_array(initializers[head.input[1]]).dtype == np.float32
    assert Counter(n.op_type for n in nodes.node)["Max"] == 1
