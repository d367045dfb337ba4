"""Camera masks and the body's height in the rig file: a PNG beside the file, the same PNG inline, or
polygons of what a camera does not see; each validated with a CalibrationError naming the camera; kept
through save and load (inline), and part of the fingerprint."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bev_service.calib.rigfile import load_rig, rig_from_yaml, rig_to_yaml, save_rig
from bev_service.errors import CalibrationError
from bev_service.imageio import encode_mask_png
from tests.conftest import DEFAULT_RIG

SIZE_HW = (640, 960)


def data_with(mask: dict[str, Any] | None = None, camera: int = 2) -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    if mask is not None:
        data["cameras"][camera]["mask"] = mask
    return copy.deepcopy(data)


def bumper_mask() -> np.ndarray:
    mask = np.ones(SIZE_HW, bool)
    mask[500:, 200:760] = False
    return mask


def test_a_mask_png_beside_the_rig_file(tmp_path: Path) -> None:
    (tmp_path / "rear-mask.png").write_bytes(encode_mask_png(bumper_mask()))
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data_with({"png": "rear-mask.png"})))
    rig = load_rig(path)
    np.testing.assert_array_equal(rig.camera("rear").mask, bumper_mask())
    assert rig.camera("front").mask is None


def test_polygons_and_inline_png_give_the_same_mask() -> None:
    polygon = [[200, 500], [759, 500], [759, 639], [200, 639]]
    by_polygon = rig_from_yaml(yaml.safe_dump(data_with({"masked_polygons": [polygon]})))
    inline = base64.b64encode(encode_mask_png(bumper_mask())).decode()
    by_png = rig_from_yaml(yaml.safe_dump(data_with({"png_base64": inline})))
    np.testing.assert_array_equal(by_polygon.camera("rear").mask, bumper_mask())
    assert by_polygon.fingerprint == by_png.fingerprint != rig_from_yaml(yaml.safe_dump(data_with())).fingerprint


def test_a_masked_rig_survives_save_and_load(tmp_path: Path) -> None:
    """A saved rig holds its masks inline, so the file stands alone (the service stores rigs this way)."""
    data = data_with({"masked_polygons": [[[0, 0], [100, 0], [0, 100]]]})
    data["ego"]["height_m"] = 1.5
    rig = rig_from_yaml(yaml.safe_dump(data))
    save_rig(rig, tmp_path / "stored.yaml")
    assert "png_base64" in (tmp_path / "stored.yaml").read_text()
    again = load_rig(tmp_path / "stored.yaml")
    assert again.fingerprint == rig.fingerprint and again.ego.height_m == 1.5
    np.testing.assert_array_equal(again.camera("rear").mask, rig.camera("rear").mask)
    assert rig_from_yaml(rig_to_yaml(rig)).fingerprint == rig.fingerprint


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        ({"png_base64": base64.b64encode(encode_mask_png(np.ones((10, 10), bool))).decode()}, "10x10 mask for a 960x640"),
        ({"png_base64": base64.b64encode(encode_mask_png(np.zeros(SIZE_HW, bool))).decode()}, "hides every pixel"),
        ({"masked_polygons": [[[-10, -10], [2000, -10], [2000, 2000], [-10, 2000]]]}, "hides every pixel"),
        ({"png_base64": "not base64!"}, "base64"),
        ({"png_base64": base64.b64encode(b"GIF89a....").decode()}, "GIF"),
        ({"png": "missing.png"}, "cannot read mask file"),
        ({"png": "../escape.png"}, "mask.png"),
        ({"png": "a.png", "masked_polygons": [[[0, 0], [1, 0], [0, 1]]]}, "exactly one"),
        ({"masked_polygons": [[[0, 0], [1, 0]]]}, "masked_polygons"),
    ],
)
def test_a_bad_mask_names_the_camera(mask: dict[str, Any], words: str, tmp_path: Path) -> None:
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data_with(mask)))
    with pytest.raises(CalibrationError) as caught:
        load_rig(path)
    assert "rear" in str(caught.value) and words in str(caught.value), str(caught.value)


def test_a_mask_file_needs_a_rig_file_on_disk() -> None:
    """A rig sent without a folder (PUT /v1/rigs) cannot name a file: only inline masks."""
    with pytest.raises(CalibrationError, match="png_base64"):
        rig_from_yaml(yaml.safe_dump(data_with({"png": "rear-mask.png"})))


@pytest.mark.parametrize("height", [0.0, -1.0, 20.0])
def test_the_body_height_is_checked(height: float) -> None:
    data = data_with()
    data["ego"]["height_m"] = height
    with pytest.raises(CalibrationError, match=r"ego\.height_m"):
        rig_from_yaml(yaml.safe_dump(data))
