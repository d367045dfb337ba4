"""``bev calib import FORMAT SOURCE --out RIG.yaml``: another project's calibration to a rig file.

The rig file is written atomically, then loaded back and validated; the command prints one line
saying what it wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bev_service.calib.import_common import DEFAULT_CELL_SIZE_M, DEFAULT_HALF_EXTENT_M
from bev_service.calib.import_ocam_json import DEFAULT_CELL_SIZE_M as OCAM_CELL_SIZE_M
from bev_service.calib.import_ocam_json import DEFAULT_CELLS, SOURCE_HEIGHTS
from bev_service.calib.importers import (
    ImportedRig,
    import_camera_info,
    import_kdt_json,
    import_ocam_json,
    import_surround_view_yaml,
    import_woodscape_json,
    write_imported,
)
from bev_service.errors import CalibrationError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "import",
        help="import a rig from another calibration format",
        description="Convert a calibration in another project's format into a rig file (validated after writing).",
    )
    formats = p.add_subparsers(dest="import_format", required=True, metavar="FORMAT")
    _register_surround_view(formats)
    _register_kdt_json(formats)
    _register_ocam_json(formats)
    _register_woodscape_json(formats)
    _register_camera_info(formats)


def _register_woodscape_json(formats: Any) -> None:
    ws = formats.add_parser(
        "woodscape-json",
        help="WoodScape calibration JSON, one file per camera (radial_poly fisheyes)",
        description="Read one WoodScape calibration JSON per camera (extrinsic quaternion x y z w and translation, ISO 8855 "
        "with the origin under the rear axle; intrinsic radial_poly k1..k4, cx/cy_offset, aspect_ratio). The polynomial "
        "is written exactly as an OCam camera. FV, RV, MVL, MVR become front, rear, left, right.",
    )
    ws.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_grid(ws)
    _add_common(ws)
    ws.set_defaults(func=run_woodscape_json)


def _register_camera_info(formats: Any) -> None:
    ci = formats.add_parser(
        "camera-info",
        help="ROS sensor_msgs/CameraInfo YAML per camera, with a poses file",
        description="Read one CameraInfo YAML per camera (equidistant = OpenCV fisheye, plumb_bob and rational_polynomial = "
        "pinhole) and --poses, a YAML mapping each camera_name to its vehicle_from_camera (matrix, or quaternion_wxyz and "
        "translation_m) of the optical frame in the vehicle frame.",
    )
    ci.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ci.add_argument("--poses", required=True, type=Path, help="YAML: camera name -> vehicle_from_camera")
    _add_grid(ci)
    _add_common(ci)
    ci.set_defaults(func=run_camera_info)


def _add_grid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell-size-m", type=float, default=DEFAULT_CELL_SIZE_M, help="grid cell size (default %(default)s)")
    p.add_argument(
        "--half-extent-m",
        type=float,
        default=DEFAULT_HALF_EXTENT_M,
        help="grid reach from the vehicle's centre (default %(default)s)",
    )


def _register_surround_view(formats: Any) -> None:
    sv = formats.add_parser(
        "surround-view-yaml",
        help="OpenCV FileStorage YAMLs (front, back, left, right) with project_matrix to a 1 cm canvas",
        description="Read DIR/yaml/<cam>.yaml (or DIR/<cam>.yaml) for cameras front, back, left, right; the grid is "
        "the source's 1 cm canvas (x in [-8, 8] m, y in [-6, 6] m), origin at the centre of the car box.",
    )
    sv.add_argument("folder", type=Path, metavar="DIR")
    _add_common(sv)
    sv.set_defaults(func=run_surround_view)


def _register_kdt_json(formats: Any) -> None:
    kdt = formats.add_parser(
        "kdt-json",
        help="K / D / T_camera_from_ground JSON with ground_axes, units_m and grid",
        description="Read a kdt-json calibration: fisheye K and D, T_camera_from_ground, the ground frame's axes, "
        "the grid (in file units) and the image size.",
    )
    kdt.add_argument("file", type=Path, metavar="FILE")
    kdt.add_argument("--units-m", type=float, default=None, help="metres per file unit (overrides the file's units_m)")
    _add_common(kdt)
    kdt.set_defaults(func=run_kdt_json)


def _register_ocam_json(formats: Any) -> None:
    ocam = formats.add_parser(
        "ocam-json",
        help="OCam intrinsic/ and extrinsic/ JSON (extrinsics from a virtual top-down camera)",
        description="Read DIR/intrinsic/<Cam>.json and DIR/extrinsic/<Cam>.json. Ground depth below the virtual "
        "camera per camera defaults to the source's: " + ", ".join(f"{name} {h:g}" for name, h in SOURCE_HEIGHTS.items()) + ".",
    )
    ocam.add_argument("folder", type=Path, metavar="DIR")
    ocam.add_argument(
        "--height", action="append", default=[], metavar="CAM=DEPTH", help="ground depth below the virtual camera for CAM"
    )
    ocam.add_argument("--cell-size-m", type=float, default=OCAM_CELL_SIZE_M, help="grid cell size (default %(default)s)")
    ocam.add_argument("--cells", type=int, default=DEFAULT_CELLS, help="grid cells per side (default %(default)s)")
    _add_common(ocam)
    ocam.set_defaults(func=run_ocam_json)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="rig file to write (YAML)")
    p.add_argument("--rig-id", default=None, help="rig id (default: from the source's folder name)")


def parse_heights(pairs: list[str]) -> dict[str, float]:
    """CAM=DEPTH arguments to a mapping."""
    heights: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            depth = float(value)
        except ValueError:
            depth = float("nan")
        if not sep or not name or not depth > 0:
            raise CalibrationError(f"expected CAM=DEPTH with a positive depth, got {pair!r}", field="height")
        heights[name.lower()] = depth
    return heights


def _write(imported: ImportedRig, out: Path) -> int:
    rig = write_imported(imported, out)
    grid = rig.grid
    print(
        f"wrote {out}: rig {rig.rig_id!r}, cameras {', '.join(rig.camera_names)}; grid {grid.rows} x {grid.cols} "
        f"at {grid.cell_size_m:g} m, x {list(grid.x_range_m)}, y {list(grid.y_range_m)}"
    )
    return 0


def run_surround_view(args: argparse.Namespace) -> int:
    return _write(import_surround_view_yaml(args.folder, rig_id=args.rig_id), args.out)


def run_kdt_json(args: argparse.Namespace) -> int:
    return _write(import_kdt_json(args.file, units_m=args.units_m, rig_id=args.rig_id), args.out)


def run_woodscape_json(args: argparse.Namespace) -> int:
    imported = import_woodscape_json(
        args.files, rig_id=args.rig_id, cell_size_m=args.cell_size_m, half_extent_m=args.half_extent_m
    )
    return _write(imported, args.out)


def run_camera_info(args: argparse.Namespace) -> int:
    imported = import_camera_info(
        args.files, args.poses, rig_id=args.rig_id, cell_size_m=args.cell_size_m, half_extent_m=args.half_extent_m
    )
    return _write(imported, args.out)


def run_ocam_json(args: argparse.Namespace) -> int:
    imported = import_ocam_json(
        args.folder, heights_m=parse_heights(args.height), cell_size_m=args.cell_size_m, cells=args.cells, rig_id=args.rig_id
    )
    return _write(imported, args.out)
