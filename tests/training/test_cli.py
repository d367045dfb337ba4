"""``bev train | eval | prune | export | infer`` through the real entry point, on a tiny ``bev synth`` folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.classes import CLASSES
from bev_service.cli.main import main
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.imageio import read_labels
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.runtime.weights import load_model, save_model
from bev_service.training.evaluate import Confusion
from bev_service.training.synthdata import DirectorySource
from tests.conftest import DEFAULT_RIG
from tests.networks import TINY, TINY_SIZE_HW, tiny_model


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two frame sets rendered at scale 0.1: 96x64 images, the tiny networks' input size."""
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--count", "2", "--seed", "3", "--scale", "0.1", "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_eval_prune_on_a_synth_folder(synth_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(synth_folder), "--val-data", str(synth_folder), "--rig", str(DEFAULT_RIG), "--no-progress"]
    size = ["--input-height", str(TINY_SIZE_HW[0]), "--input-width", str(TINY_SIZE_HW[1]), "--crop-height", "0"]
    train_dir = tmp_path / "train"
    args = ["train", "--out-dir", str(train_dir), "--width", "0.5", "--steps", "4", "--batch-size", "2", *size, *data]
    assert main(args) == 0
    model = train_dir / "model.pt"
    assert load_model(model).config.input_size_hw == TINY_SIZE_HW

    report_path = tmp_path / "eval.json"
    assert (
        main(["eval", "--model", str(model), "--data", str(synth_folder), "--rig", str(DEFAULT_RIG), "--json", str(report_path)])
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["frame_sets"] == 2 and report["backend"].startswith("torch")
    assert {"image", "bev", "bev_vs_oracle", "oracle_vs_true_bev"} <= set(report)
    assert report["oracle_vs_true_bev"]["miou"] > 0.3  # the flat-ground ceiling: ground classes warp exactly
    assert "mIoU" in capsys.readouterr().out

    pruned = tmp_path / "pruned.pt"
    prune = ["prune", "--model", str(model), "--out", str(pruned), "--ratio", "0.5", "--iterative-steps", "1"]
    assert (
        main([*prune, "--finetune-steps", "2", "--batch-size", "2", "--crop-height", "0", "--latency-repeats", "1", *data]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["macs_ratio"] > 1.0 and summary["after"]["params"] < summary["before"]["params"]
    assert load_model(pruned).info["prune_report"]["macs_ratio"] == summary["macs_ratio"]
    assert main([*prune, "--keep", "initial,stage9", *data]) == 2
    assert "cannot keep 'stage9': not a convolution of the network" in capsys.readouterr().err


def test_eval_at_the_frame_size_scores_a_smaller_network_against_the_folders_labels(
    synth_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = ModelConfig(width=0.25, input_size_hw=(TINY_SIZE_HW[0] // 2, TINY_SIZE_HW[1] // 2))
    model = tmp_path / "half.pt"
    save_model(model, tiny_model(config=half), half)
    common = ["eval", "--model", str(model), "--data", str(synth_folder), "--rig", str(DEFAULT_RIG)]
    reports = {}
    for where in ("input", "frame"):
        assert main([*common, "--labels-at", where, "--json", str(tmp_path / f"{where}.json")]) == 0
        reports[where] = json.loads((tmp_path / f"{where}.json").read_text())
    assert reports["frame"]["labels_at"] == "frame"

    # By hand: images shrunk to the input (as the pipeline does), the prediction scaled back up, nearest.
    source = DirectorySource(synth_folder, half.input_size_hw, resize=False)
    segmenter = TorchSegmenter(tiny_model(config=half), half, device="cpu")
    by_hand = Confusion(half.num_classes)
    for i in range(len(source)):
        frame = source[i]
        assert frame.labels.shape[1:] == TINY_SIZE_HW  # the folder's own size, twice the input
        predicted = segmenter.segment(resize_images(frame.images, half.input_size_hw)).labels_numpy()
        by_hand.update(resize_labels(predicted, TINY_SIZE_HW), frame.labels)
    assert reports["frame"]["image"]["miou"] == pytest.approx(by_hand.miou(), abs=1e-4)
    assert reports["frame"]["image"] != reports["input"]["image"]  # labels at 48x32 are another reference

    assert main([*common[:3], "--data", "synth", "--labels-at", "frame"]) == 2
    assert "need a bev synth folder" in capsys.readouterr().err


def test_eval_can_leave_the_body_unscored(synth_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "tiny.pt"
    save_model(model, tiny_model(), TINY)
    common = ["eval", "--model", str(model), "--data", str(synth_folder), "--rig", str(DEFAULT_RIG)]
    assert main([*common, "--body", "ignore", "--json", str(tmp_path / "no-body.json")]) == 0
    report = json.loads((tmp_path / "no-body.json").read_text())
    assert report["body_scored_as"] == "ignore"

    # By hand: every labelled pixel but the body's.
    source = DirectorySource(synth_folder, TINY_SIZE_HW)
    segmenter = TorchSegmenter(tiny_model(), TINY, device="cpu")
    by_hand, with_body = Confusion(TINY.num_classes), Confusion(TINY.num_classes)
    body_called = np.zeros(TINY.num_classes, dtype=np.int64)
    for i in range(len(source)):
        frame = source[i]
        assert frame.body is not None
        predicted = segmenter.segment(frame.images).labels_numpy()
        by_hand.update(predicted[~frame.body], frame.labels[~frame.body])
        with_body.update(predicted, frame.labels)
        body_called += np.bincount(predicted[frame.body], minlength=TINY.num_classes)
    assert body_called.sum() > 0, "the default rig's cameras see the body"
    assert report["image"]["miou"] == pytest.approx(by_hand.miou(), abs=1e-4)
    ground = [c.id for c in CLASSES if c.ground]
    assert report["body"]["pixels"] == body_called.sum()
    assert report["body"]["ground_share"] == pytest.approx(body_called[ground].sum() / body_called.sum(), abs=1e-4)
    assert by_hand.miou() != pytest.approx(with_body.miou(), abs=1e-6)

    old = tmp_path / "old"  # a folder written before frame sets carried body masks
    shutil.copytree(synth_folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for frame_set in manifest["frame_sets"]:
        for files in frame_set["files"]["cameras"].values():
            del files["body"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert main([*common[:3], "--data", str(old), "--rig", str(DEFAULT_RIG), "--body", "ignore"]) == 2
    assert "--body ignore" in capsys.readouterr().err


def test_resuming_with_other_settings_is_an_error_exit(
    synth_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["train", "--out-dir", str(tmp_path), "--width", "0.25", "--steps", "2", "--batch-size", "1", "--crop-height", "0"]
    common += ["--input-height", "64", "--input-width", "96", "--data", str(synth_folder), "--val-data", str(synth_folder)]
    assert main([*common, "--no-progress"]) == 0
    assert main([*common, "--no-progress", "--resume", "--lr", "0.5"]) == 2
    assert "cannot resume with different settings" in capsys.readouterr().err


def test_infer_writes_class_ids_and_timings(tiny_onnx: Path, tmp_path: Path) -> None:
    rig = load_rig(DEFAULT_RIG)
    frames = []
    for cam in rig.cameras:
        path = tmp_path / f"{cam.name}.jpg"
        cv2.imwrite(str(path), np.full((*cam.image_size_hw, 3), 90, dtype=np.uint8))
        frames.append(f"{cam.name}={path}")
    out = tmp_path / "bev.png"
    assert main(["infer", "--rig", str(DEFAULT_RIG), "--model", str(tiny_onnx), "--out", str(out), *frames]) == 0
    grid = read_labels(out)
    assert grid.shape == (400, 400) and set(np.unique(grid)) - {EGO, UNKNOWN} <= set(range(8))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["backend"] == "onnxruntime-cpu" and meta["trained_input_size_hw"] == list(TINY_SIZE_HW)
    assert (
        meta["input_sizes_hw"] == {name: list(TINY_SIZE_HW) for name in meta["input_sizes_hw"]}
        and len(meta["input_sizes_hw"]) == 4
    )
    assert meta["timings_ms"]["total"] > 0 and meta["rows"] == 400


def test_infer_with_a_missing_camera_is_an_error_exit(
    tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bev.png"
    assert main(["infer", "--model", str(tiny_onnx), "--out", str(out), f"front={tmp_path / 'x.jpg'}"]) == 2
    assert "missing 'left', 'rear', 'right'" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_model_file_is_an_error_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "truncated or not a torch.save file" in capsys.readouterr().err
