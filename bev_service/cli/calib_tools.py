"""``bev calib intrinsics | homography | pose | mask | check``: calibrate a camera, tie it to the ground, mask
what it cannot see, check a rig.

The how-to that strings these together for a real vehicle is ``calibration/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bev_service.calib.correspondences import (
    fit_ground_homography,
    fit_ground_pose,
    homography_to_json,
    load_points,
    pose_to_json,
)
from bev_service.calib.coverage import coverage_picture, coverage_text, coverage_to_json, measure_coverage, with_masks
from bev_service.calib.intrinsics import MODELS, Board, calibrate_images, intrinsics_to_json
from bev_service.calib.mask import mask_from_frames, mask_picture
from bev_service.calib.rigfile import load_rig, save_rig
from bev_service.errors import CalibrationError, FrameError
from bev_service.imageio import check_whole_factor, read_image, write_png

log = logging.getLogger(__name__)

POINTS_FORMAT = """\
points file (JSON):
  {
    "camera": "front",                  optional: the rig camera the points belong to
    "intrinsics": "front_cam.json",     optional: a CAM.json of `bev calib intrinsics` (path relative to
                                        this file) or its content: model, K, D, image_size_hw
    "undistorted_k": [[fx,0,cx],[0,fy,cy],[0,0,1]],   optional; default: the camera's K
    "points": [
      {"name": "mat corner FL", "image_px": [u, v], "ground_m": [x, y]},
      ...                               at least 4, no 3 of them on one line
    ]
  }
image_px: pixels of the raw (distorted) image when intrinsics are given, else of the undistorted image.
ground_m: vehicle frame on the ground, metres, x forward, y left (ISO 8855), origin as in the rig file.
"""


def register(commands: Any) -> None:
    _register_intrinsics(commands)
    _register_homography(commands)
    _register_pose(commands)
    _register_mask(commands)
    _register_check(commands)


def _register_mask(commands: Any) -> None:
    p = commands.add_parser(
        "mask",
        help="mask a camera's own body and the dark border outside its image circle, from its frames",
        description="From frames of one camera (a few seconds while the vehicle moves: three or more), the pixels whose "
        "content stays the same (the car's body: bumper, sill, mirror housing) and those dark in every frame (outside a "
        "fisheye's image circle), both reaching the image's edge. A single frame gives the image circle alone. Writes the "
        "mask into the rig file (inline), masked pixels never own a BEV cell, and draws it over the first frame for review.",
    )
    p.add_argument("--rig", required=True, type=Path, help="rig file (YAML)")
    p.add_argument("--camera", required=True, help="the rig camera the frames are of")
    p.add_argument("--out", type=Path, help="rig file to write (default: --rig, in place)")
    p.add_argument("--review", type=Path, help="review picture (default: <out stem>.<camera>.mask.png beside it)")
    p.add_argument(
        "frames", nargs="+", type=Path, metavar="FRAME", help="the camera's frames: calibrated size or smaller by a whole factor"
    )
    p.set_defaults(func=run_mask)


def _register_intrinsics(commands: Any) -> None:
    p = commands.add_parser(
        "intrinsics",
        help="camera intrinsics from checkerboard images",
        description="Find the checkerboard's inner corners in every image and calibrate the camera (OpenCV fisheye or "
        "pinhole). Writes CAM.json: model, K, D, image_size_hw, rms_px, the views used and dropped (with reasons), and "
        "`rig_camera`, the image_size_hw and model keys of a rig file camera.",
    )
    p.add_argument(
        "--model", required=True, choices=MODELS, help="fisheye (Kannala-Brandt k1..k4) or pinhole (k1, k2, p1, p2, k3)"
    )
    p.add_argument("--board", required=True, metavar="COLSxROWS", help="inner corners of the board, e.g. 8x6 for 9x7 squares")
    p.add_argument("--square-m", required=True, type=float, help="side of one square in metres (scales only the board poses)")
    p.add_argument("--out", required=True, type=Path, help="output CAM.json")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="checkerboard images of one camera, all the same size")
    p.set_defaults(func=run_intrinsics)


def _register_homography(commands: Any) -> None:
    p = commands.add_parser(
        "homography",
        help="ground homography from image-ground point pairs",
        description="Fit the ground homography (undistorted image pixels to vehicle ground metres) of one camera\n"
        "to measured point pairs, and report each point's error on the ground in cm. Writes H.json:\n"
        "ground_from_image, undistorted_k, the errors and, with intrinsics, `rig_camera` ready to paste\n"
        "into a rig file.",
        epilog=POINTS_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--points", required=True, type=Path, help="points file (JSON, format below)")
    p.add_argument("--out", required=True, type=Path, help="output H.json")
    p.add_argument(
        "--ransac-cm", type=float, default=None, help="fit to RANSAC's inliers at this ground error (cm) instead of all points"
    )
    p.set_defaults(func=run_homography)


def _register_pose(commands: Any) -> None:
    p = commands.add_parser(
        "pose",
        help="camera pose (vehicle_from_camera) from image-ground point pairs",
        description="Solve the camera's pose from measured point pairs and its intrinsics (required in the points\n"
        "file), minimising the pixel error through the camera model. Writes POSE.json: vehicle_from_camera\n"
        "(4x4, and quaternion + translation), each point's error in pixels and `rig_camera` ready to paste\n"
        "into a rig file.",
        epilog=POINTS_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--points", required=True, type=Path, help="points file (JSON, format below), with intrinsics")
    p.add_argument("--out", required=True, type=Path, help="output POSE.json")
    p.set_defaults(func=run_pose)


def _register_check(commands: Any) -> None:
    p = commands.add_parser(
        "check",
        help="validate a rig and draw which camera owns each BEV cell",
        description="Load and validate a rig file, build its lookup tables and draw the coverage: each camera's cells in "
        "its colour, cells seen by more than one camera hatched, unknown cells dark, the ego box, metre lines, forward up. "
        "Prints a summary and writes OUT.png and OUT.json (the shares, table build time and the picture's layout).",
    )
    p.add_argument("--rig", required=True, help="rig file (YAML)")
    p.add_argument("--out", required=True, type=Path, help="output PNG; the figures go to the same name with .json")
    p.add_argument(
        "--scale", type=_positive_int, default=None, help="pixels per grid cell (default: the grid's long side >= 400 px)"
    )
    p.set_defaults(func=run_check)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def run_mask(args: argparse.Namespace) -> int:
    rig = load_rig(args.rig)
    try:
        camera = rig.camera(args.camera)
    except KeyError as exc:
        raise CalibrationError(str(exc.args[0]), field="cameras") from exc
    frames = [read_image(path) for path in args.frames]
    for path, frame in zip(args.frames, frames, strict=True):
        check_whole_factor(frame.shape[:2], camera.image_size_hw, name=f"{args.camera} ({path})")
    try:
        found = mask_from_frames(frames)
    except ValueError as exc:
        raise FrameError(f"camera {args.camera!r}: {exc}") from exc
    h, w = camera.image_size_hw
    valid = cv2.resize(found.valid.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    if not valid.any():
        raise CalibrationError(
            "the frames leave no pixel that sees the world (all dark, or all unchanged)", camera=camera.name, field="mask"
        )
    cameras = tuple(dataclasses.replace(c, mask=valid) if c.name == camera.name else c for c in rig.cameras)
    out = args.out or args.rig
    save_rig(dataclasses.replace(rig, cameras=cameras), out, description=f"{args.camera} masked by bev calib mask")
    review = args.review or out.with_name(f"{out.stem}.{args.camera}.mask.png")
    write_png(review, mask_picture(frames[0], found))
    summary = {
        "rig": str(out),
        "camera": args.camera,
        "frames": found.frames,
        "hidden_share": round(found.hidden_share, 4),
        "outside_image_circle_share": round(float(found.dark.mean()), 4),
        "body_share": round(float(found.still.mean()), 4),
        "review": str(review),
    }
    print(json.dumps(summary))
    return 0


def run_intrinsics(args: argparse.Namespace) -> int:
    board = Board.parse(args.board, args.square_m)
    result = calibrate_images(args.images, board, args.model)
    _write_json(args.out, intrinsics_to_json(result))
    k = result.k
    print(
        f"{result.model}: fx {k[0, 0]:.3f} fy {k[1, 1]:.3f} cx {k[0, 2]:.3f} cy {k[1, 2]:.3f} px, rms {result.rms_px:.3f} px; "
        f"{len(result.views_used)} views used, {len(result.views_dropped)} dropped -> {args.out}"
    )
    return 0


def run_homography(args: argparse.Namespace) -> int:
    points = load_points(args.points)
    fit = fit_ground_homography(points, args.ransac_cm)
    _write_json(args.out, homography_to_json(points, fit, args.ransac_cm))
    outliers = len(points.names) - int(fit.inliers.sum())
    print(
        f"ground homography from {int(fit.inliers.sum())} points"
        + (f" ({outliers} outliers left out)" if outliers else "")
        + f": rms {fit.rms_cm:.2f} cm, max {fit.max_cm:.2f} cm on the ground -> {args.out}"
    )
    return 0


def run_pose(args: argparse.Namespace) -> int:
    points = load_points(args.points)
    fit = fit_ground_pose(points)
    _write_json(args.out, pose_to_json(points, fit))
    x, y, z = fit.vehicle_from_camera[:3, 3]
    print(
        f"pose from {len(points.names)} points: camera at x {x:.3f} y {y:.3f} z {z:.3f} m, "
        f"rms {fit.rms_px:.2f} px, max {fit.max_px:.2f} px -> {args.out}"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    rig = load_rig(args.rig)
    tables, coverage = measure_coverage(rig)
    picture, layout = coverage_picture(tables, coverage, scale=args.scale)
    picture = with_masks(picture, rig)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, picture)
    _write_json(args.out.with_suffix(".json"), coverage_to_json(rig, coverage, layout))
    print(coverage_text(rig, coverage))
    print(f"-> {args.out}, {args.out.with_suffix('.json')}")
    return 0
