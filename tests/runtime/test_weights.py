"""Model files: weights-only round trips, and a clear ModelError for every kind of bad file."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bev_service.errors import ModelError
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.runtime.weights import load_model, save_model
from tests.networks import TINY, random_images, tiny_model


def test_round_trip_gives_the_same_labels_and_config(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    model = tiny_model(seed=3)
    save_model(path, model, TINY, {"steps": 7})
    loaded = load_model(path)
    assert loaded.config == TINY.with_channels(model)
    assert loaded.info == {"steps": 7}
    assert not loaded.model.training
    images = random_images(2)
    expected = TorchSegmenter(model, TINY, device="cpu").segment(images).labels_numpy()
    np.testing.assert_array_equal(
        TorchSegmenter(loaded.model, loaded.config, device="cpu").segment(images).labels_numpy(), expected
    )


def test_the_file_holds_only_tensors_and_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_model(path, tiny_model(), TINY)
    payload = torch.load(path, weights_only=True)  # raises if anything but tensors and plain containers is inside
    assert set(payload) == {"format", "version", "config", "info", "state_dict"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "absent.pt")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_model(path, tiny_model(), TINY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated or not a torch\.save file"):
        load_model(path)


def test_a_file_of_other_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    with pytest.raises(ModelError, match=str(path.name)):
        load_model(path)


def test_wrong_class_count(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    config = replace(TINY, num_classes=5, class_names=("a", "b", "c", "d", "e"))
    save_model(path, config.build(), config)
    with pytest.raises(ModelError, match="predicts 5 classes, expected 8"):
        load_model(path)
    assert load_model(path, classes=None).config.num_classes == 5


def test_tensors_that_do_not_fit_the_config(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_model(path, tiny_model(), TINY)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.weight"] = torch.zeros(3, 3, 2, 2)
    torch.save(payload, path)
    with pytest.raises(ModelError, match="do not fit the network"):
        load_model(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"format": "bev-service/enet", "config": TINY, "model": tiny_model()}, path)  # whole objects, pickled
    with pytest.raises(ModelError, match="refused, holds more than tensors"):
        load_model(path)


def test_a_plain_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(pickle.dumps({"format": "bev-service/enet"}))
    with pytest.raises(ModelError, match=path.name):
        load_model(path)


def test_someone_elses_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelError, match="not a bev-service model file"):
        load_model(path)


def test_truncated_onnx_file(tiny_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    data = tiny_onnx.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="cannot load as an ONNX model"):
        OnnxSegmenter(path)


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        OnnxSegmenter(tmp_path / "absent.onnx")


def test_onnx_with_other_classes_is_refused(tiny_onnx: Path) -> None:
    with pytest.raises(ModelError, match="predicts 8 classes, expected 3"):
        OnnxSegmenter(tiny_onnx, classes=("a", "b", "c"))
