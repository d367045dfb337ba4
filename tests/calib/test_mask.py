"""``bev calib mask``: a camera's body and the dark border outside its image circle, found from its frames,
written into the rig; on the real pjlab road recording no BEV cell is then read from outside a lens's
image circle (the real-data part skips when the folder is absent)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bev_service.calib.importers import import_kdt_json
from bev_service.calib.mask import mask_from_frames
from bev_service.calib.rigfile import load_rig, save_rig
from bev_service.cli.main import main
from bev_service.geometry.tables import build_ground_tables
from bev_service.imageio import read_image, write_png
from tests.conftest import DEFAULT_RIG, real_folder

H, W = 320, 480


def scene(shift: int, seed: int = 0) -> np.ndarray:
    """A textured world moving past the camera by ``shift`` pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 230, size=(H // 8, W // 8 + 40, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize(((W // 8 + 40) * 8, H), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(big[:, shift : shift + W])


def truth() -> tuple[np.ndarray, np.ndarray]:
    """(outside the image circle, the body): a circle of radius 0.45 W about the centre, cut by the top and the
    bottom of the image as a wide fisheye's is, and a bumper along the bottom."""
    v, u = np.mgrid[0:H, 0:W]
    outside = np.hypot(u - W / 2 + 0.5, v - H / 2 + 0.5) > 0.45 * W
    body = (v > H - 60) & (np.abs(u - W / 2) < 150) & ~outside
    return outside, body


def camera_frames(count: int) -> list[np.ndarray]:
    outside, body = truth()
    frames = []
    for i in range(count):
        frame = scene(8 * i)
        frame[body] = (200, 200, 205)  # the same paint in every frame
        frame[body & ((np.arange(W)[None, :] // 20) % 2 == 0)] = (120, 30, 30)  # with a logo on it
        noise = np.random.default_rng(100 + i).integers(0, 12, size=frame.shape)
        frame[outside] = noise[outside]  # black, with sensor noise
        frames.append(frame.astype(np.uint8))
    return frames


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def covers(found: np.ndarray, true: np.ndarray) -> None:
    """``found`` holds ``true`` but for a pixel along its outline, and at most a thin rim more (1.5% of the radius)."""
    assert (found & true).sum() >= 0.99 * true.sum(), "missed part of it"
    assert (found & ~true).mean() < 0.02, "took a wide band of good pixels with it"


def test_the_body_and_the_border_are_found_from_a_moving_camera() -> None:
    outside, body = truth()
    found = mask_from_frames(camera_frames(6))
    covers(found.dark, outside)
    assert iou(found.still, body) > 0.9
    covers(~found.valid, outside | body)


def test_one_frame_gives_the_image_circle_alone() -> None:
    outside, _ = truth()
    found = mask_from_frames(camera_frames(1))
    assert not found.still.any()
    covers(found.dark, outside)


def test_a_camera_without_a_border_or_body_keeps_every_pixel() -> None:
    found = mask_from_frames([scene(8 * i, seed=3) for i in range(5)])
    assert found.valid.all()


def test_frames_of_two_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="one size"):
        mask_from_frames([np.zeros((10, 20, 3), np.uint8), np.zeros((20, 10, 3), np.uint8)])


def test_bev_calib_mask_writes_the_rig_and_a_review_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig_file = tmp_path / "rig.yaml"
    save_rig(load_rig(DEFAULT_RIG), rig_file)
    paths = []
    for i, frame in enumerate(camera_frames(4)):  # half the calibrated 960x640: a whole factor
        paths.append(tmp_path / f"rear{i}.png")
        write_png(paths[-1], frame)
    out = tmp_path / "masked.yaml"
    assert main(["calib", "mask", "--rig", str(rig_file), "--camera", "rear", "--out", str(out), *map(str, paths)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 4 and summary["body_share"] > 0.05 and summary["outside_image_circle_share"] > 0.1
    rig = load_rig(out)
    mask = rig.camera("rear").mask
    assert mask is not None and mask.shape == (640, 960) and rig.camera("front").mask is None
    outside, body = truth()
    covers(~mask[::2, ::2], outside | body)
    assert read_image(Path(summary["review"])).shape == (H, W, 3)
    assert main(["calib", "mask", "--rig", str(rig_file), "--camera", "roof", str(paths[0])]) == 2
    assert "no camera 'roof'" in capsys.readouterr().err


def test_no_cell_of_the_pjlab_road_rig_is_read_from_outside_an_image_circle(real_data: Path, tmp_path: Path) -> None:
    """Without masks the fisheyes' dark border owns cells (the dark wedges of the BEV); masked from one
    frame each by bev calib mask, none does, and the lenses keep most of their cells."""
    folder = real_folder(real_data, "pjlab-4fisheye-road")
    rig = import_kdt_json(folder / "calibration_from_source.json").rig
    rig_file = tmp_path / "road.yaml"
    save_rig(rig, rig_file)
    frames = {cam: folder / "imgs" / f"{cam.capitalize()}.jpg" for cam in rig.camera_names}
    for cam, frame in frames.items():
        assert main(["calib", "mask", "--rig", str(rig_file), "--camera", cam, str(frame)]) == 0
    masked = load_rig(rig_file)

    def dark_reads(tables_rig: object) -> tuple[int, int]:
        tables = build_ground_tables(tables_rig)  # type: ignore[arg-type]
        dark = owned = 0
        for i, cam in enumerate(rig.camera_names):
            grey = read_image(frames[cam]).mean(axis=-1)
            cells = tables.owner == i
            uv = np.rint(tables.pixel_uv[i][cells]).astype(int)
            dark += int((grey[uv[:, 1], uv[:, 0]] < 20).sum())
            owned += int(cells.sum())
        return dark, owned

    before, owned_before = dark_reads(rig)
    after, owned_after = dark_reads(masked)
    assert before > 1000, "the case this guards against: cells read from the black outside the circles"
    assert after < 0.001 * owned_after, (before, after)
    assert owned_after > 0.8 * owned_before


def test_bev_calib_check_shows_the_masks_and_the_body(tmp_path: Path) -> None:
    plain_out, masked_out = tmp_path / "plain.png", tmp_path / "masked.png"
    assert main(["calib", "check", "--rig", str(DEFAULT_RIG), "--out", str(plain_out)]) == 0
    rig = load_rig(DEFAULT_RIG)
    mask = np.ones((640, 960), bool)
    mask[520:] = False
    cameras = tuple(dataclasses.replace(c, mask=mask) if c.name == "rear" else c for c in rig.cameras)
    rig_file = tmp_path / "masked.yaml"
    save_rig(dataclasses.replace(rig, cameras=cameras, ego=dataclasses.replace(rig.ego, height_m=1.5)), rig_file)
    assert main(["calib", "check", "--rig", str(rig_file), "--out", str(masked_out)]) == 0
    plain, masked = read_image(plain_out), read_image(masked_out)
    assert masked.shape[0] > plain.shape[0] + 100 and masked.shape[1] == plain.shape[1], "a strip of masks below"
    figures = json.loads(masked_out.with_suffix(".json").read_text())
    shares = {c["name"]: c["masked_share"] for c in figures["cameras"]}
    assert shares["rear"] == pytest.approx(120 / 640) and shares["front"] is None and figures["body_height_m"] == 1.5
