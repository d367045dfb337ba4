"""``bev segment``: images of any size through the network at their own shape, to class-id maps of each
input's own size, with an optional coloured overlay and a sheet of them all; clear errors for what it cannot read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from bev_service.classes import palette
from bev_service.cli.main import main
from bev_service.cli.segment import SHEET_TILE_HEIGHT, overlay
from bev_service.imageio import decode_labels, read_image, write_png
from bev_service.runtime.pipeline import segment_image
from bev_service.runtime.segmenter import load_segmenter

SIZES_WH = ((480, 360), (1280, 966), (1920, 1080))


def textured(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 20 + 1, width // 20 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for i, (w, h) in enumerate(SIZES_WH):
        path = folder / f"cam{w}x{h}.{'png' if i % 2 else 'jpg'}"
        if path.suffix == ".png":
            write_png(path, textured(w, h, i))
        else:
            Image.fromarray(textured(w, h, i)).save(path, quality=90)
        paths.append(path)
    return paths


def test_labels_have_each_inputs_own_size(images: list[Path], tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(tiny_weights), "--overlay", "--out", str(out), *map(str, images)]) == 0
    segmenter = load_segmenter(tiny_weights)
    for path, (w, h) in zip(images, SIZES_WH, strict=True):
        labels = decode_labels((out / f"{path.stem}.png").read_bytes())
        assert labels.shape == (h, w) and labels.max() < segmenter.num_classes
        np.testing.assert_array_equal(labels, segment_image(segmenter, read_image(path)))
        overlay = read_image(out / f"{path.stem}.overlay.png")
        assert overlay.shape == (h, w, 3) and not np.array_equal(overlay, read_image(path))


def test_more_pixels_give_a_finer_map(images: list[Path], tiny_weights: Path, tmp_path: Path) -> None:
    """--input-pixels sets the size the network runs at: the default (the model's 96x64) against 16 times as many."""
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    path = str(images[2])
    assert main(["segment", "--model", str(tiny_weights), "--out", str(coarse), path]) == 0
    assert main(["segment", "--model", str(tiny_weights), "--input-pixels", str(16 * 64 * 96), "--out", str(fine), path]) == 0

    def runs(labels: np.ndarray) -> int:  # label changes along the rows: more at a finer size
        return int((labels[:, 1:] != labels[:, :-1]).sum())

    read = lambda folder: decode_labels((folder / f"{images[2].stem}.png").read_bytes())  # noqa: E731
    assert read(coarse).shape == read(fine).shape == (1080, 1920)
    assert runs(read(fine)) > runs(read(coarse))


def test_unreadable_inputs_exit_2(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gif = tmp_path / "frame.gif"
    Image.new("RGB", (64, 48)).save(gif)
    assert main(["segment", "--model", str(tiny_weights), "--out", str(tmp_path / "o"), str(gif)]) == 2
    assert "GIF" in capsys.readouterr().err
    a, b = tmp_path / "a" / "front.png", tmp_path / "b" / "front.png"
    for p in (a, b):
        p.parent.mkdir()
        write_png(p, np.zeros((48, 64, 3), np.uint8))
    assert main(["segment", "--model", str(tiny_weights), "--out", str(tmp_path / "o"), str(a), str(b)]) == 2
    assert "distinct names" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_sheet_shows_every_overlay_at_one_height_over_a_legend(
    images: list[Path], tiny_weights: Path, tmp_path: Path, suffix: str
) -> None:
    out, sheet = tmp_path / "seg", tmp_path / f"sheet{suffix}"
    assert main(["segment", "--model", str(tiny_weights), "--sheet", str(sheet), "--out", str(out), *map(str, images)]) == 0
    picture = read_image(sheet)
    widths = [round(w * SHEET_TILE_HEIGHT / h) for w, h in SIZES_WH]
    assert picture.shape[0] > SHEET_TILE_HEIGHT and picture.shape[1] == sum(widths)
    assert not list(out.glob("*.overlay.png")), "overlays are written only with --overlay"
    # each tile is its image's overlay, scaled: compare the last one away from its name
    x0 = sum(widths[:-1])
    blended = read_image(images[-1])
    tile = picture[40:SHEET_TILE_HEIGHT, x0 + 10 :].astype(np.int16)
    labels = decode_labels((out / f"{images[-1].stem}.png").read_bytes())
    expected = cv2.resize(overlay(blended, labels, palette()), (widths[-1], SHEET_TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    tolerance = 12 if suffix == ".jpg" else 0
    assert np.abs(tile - expected[40:, 10:].astype(np.int16)).mean() <= tolerance


def test_sheet_needs_an_image_name(
    images: list[Path], tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["segment", "--model", str(tiny_weights), "--sheet", str(tmp_path / "sheet.gif"), "--out", str(tmp_path / "o")]
    assert main([*args, str(images[0])]) == 2
    assert "sheet.gif" in capsys.readouterr().err and not (tmp_path / "o").exists()
