"""The pjlab-4ocam-parking rig (ocam-json importer) projected through ``BevProjector``: there is no
published output, so each camera must own its own side and overlapping cameras must agree.

Figures are printed (run with ``-s`` to see them) and PNGs for a person to look at go to
``build/artifacts/importers/``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from bev_service.calib.importers import import_ocam_json
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from tests.calib.projection_measures import Grey, camera_images, ncc, per_camera_warp, record, save_artifact
from tests.conftest import real_folder

OCAM_PAIRS = (("front", "left"), ("front", "right"), ("back", "left"), ("back", "right"))


PARKING_CELL_M = 0.05  # twice the importer's default: a quarter of the cells, a quicker projection


@pytest.fixture(scope="module")
def parking(real_data: Path) -> tuple[Rig, BevProjector, NDArray[np.uint8]]:
    folder = real_folder(real_data, "pjlab-4ocam-parking")
    rig = import_ocam_json(folder, cell_size_m=PARKING_CELL_M, cells=500).rig
    projector = BevProjector(rig)
    return rig, projector, camera_images(folder, rig, "imgs/{Name}.png")


class TestOwnership:
    def test_cameras_own_their_own_side(self, parking: tuple[Rig, BevProjector, NDArray[np.uint8]]) -> None:
        """Each camera owns the floor just outside the car box on its own side, next to where it is mounted
        (0.5 to 4 m out, within 1.5 m of the camera along the car's side): a wrong guess of the source's
        virtual frame (front and back, or left and right, swapped) fails here."""
        rig, projector, images = parking
        save_artifact("pjlab_4ocam_parking.png", projector.warp_image(images))
        centres = rig.grid.cell_centres()
        x, y = centres[..., 0], centres[..., 1]
        (x_lo, x_hi), (y_lo, y_hi) = rig.ego.x_range_m, rig.ego.y_range_m
        owner = projector.tables.owner
        shares = {}
        for index, cam in enumerate(rig.cameras):
            assert cam.vehicle_from_camera is not None
            cam_x, cam_y = cam.vehicle_from_camera[:2, 3]
            along_x, along_y = np.abs(x - cam_x) < 1.5, np.abs(y - cam_y) < 1.5
            zone = {
                "front": (x > x_hi + 0.5) & (x < x_hi + 4) & along_y,
                "back": (x < x_lo - 0.5) & (x > x_lo - 4) & along_y,
                "left": (y > y_hi + 0.5) & (y < y_hi + 4) & along_x,
                "right": (y < y_lo - 0.5) & (y > y_lo - 4) & along_x,
            }[cam.name]
            shares[cam.name] = float((owner[zone] == index).mean())
        print(
            f"\npjlab-4ocam-parking: share of the cells outside each camera it owns: {shares}; "
            f"share of the whole grid: {projector.tables.owner_share()}"
        )
        record("pjlab_4ocam_parking_owners", {"own_side_share": shares, "grid_share": projector.tables.owner_share()})
        for name, share in shares.items():
            assert share > 0.95, name


def markings(rgb: NDArray[np.uint8]) -> Grey:
    """Paint on the floor: yellow (red and green over blue) or brighter than its surroundings (within
    25 cm); blurred a little so that nearby strokes overlap."""
    cells_per_m = 1 / PARKING_CELL_M
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    yellow = np.clip((r + g) / 2 - b - 20, 0, None)
    lum = (r + g + b) / 3
    bright = np.clip(lum - cv2.GaussianBlur(lum, (0, 0), 0.25 * cells_per_m) - 10, 0, None)
    return np.asarray(cv2.GaussianBlur(np.maximum(yellow, bright), (0, 0), 0.075 * cells_per_m), dtype=np.float32)


class TestOverlaps:
    def test_overlapping_cameras_agree(self, parking: tuple[Rig, BevProjector, NDArray[np.uint8]]) -> None:
        """In cells two neighbouring cameras both see, their floor markings line up: the sideways offset
        that correlates them best is within 20 cm, and 50 cm sideways correlates worse than none. (Sideways
        only: the lanes run lengthwise, so a lengthwise offset hardly changes the correlation.)"""
        rig, projector, images = parking
        paint = {name: markings(per_camera_warp(projector, i, images[i])) for i, name in enumerate(rig.camera_names)}
        seen = {name: projector.tables.seen[i] for i, name in enumerate(rig.camera_names)}
        cm_20, cm_50 = round(0.2 / PARKING_CELL_M), round(0.5 / PARKING_CELL_M)
        for a, b in OCAM_PAIRS:
            shared = (seen[a] & seen[b] & ~projector.tables.ego).astype(np.uint8)
            both = cv2.erode(shared, np.ones((7, 7), np.uint8)) > 0  # away from the edges of either view
            rows, cols = np.nonzero(both.any(axis=1))[0], np.nonzero(both.any(axis=0))[0]
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            profile = {dc: ncc(np.roll(paint[a], dc, axis=1)[box], paint[b][box], both[box]) for dc in range(-cm_50, cm_50 + 1)}
            best = max(profile, key=lambda dc: profile[dc])
            print(
                f"\n{a}/{b}: {both.sum()} shared cells ({both.sum() * PARKING_CELL_M**2:.0f} m2); marking NCC {profile[0]:+.3f} "
                f"in place, best {profile[best]:+.3f} at {best * PARKING_CELL_M * 100:+.0f} cm sideways, "
                f"{profile[-cm_50]:+.3f}/{profile[cm_50]:+.3f} at -50/+50 cm"
            )
            assert both.sum() * PARKING_CELL_M**2 > 50  # square metres
            assert abs(best) <= cm_20
            assert profile[0] > 0.2
            assert profile[0] > max(profile[-cm_50], profile[cm_50])
