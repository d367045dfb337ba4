"""``bev project``: per-camera images (or label maps) of one frame set to the BEV grid, offline."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bev_service.calib.rigfile import load_rig
from bev_service.errors import FrameError
from bev_service.geometry.projector import BevProjector
from bev_service.imageio import check_camera_set, read_image, read_labels, write_png

log = logging.getLogger(__name__)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "project",
        help="warp one frame set onto the BEV grid",
        description="Warp per-camera images (RGB surround view, bilinear) or label maps (--labels, nearest) onto the "
        "rig's BEV grid. Writes OUT.png and OUT.json (grid metadata and each camera's share of the cells).",
    )
    p.add_argument("--rig", required=True, help="rig file (YAML)")
    p.add_argument("--out", required=True, type=Path, help="output PNG; its metadata goes to the same name with .json")
    p.add_argument("--labels", action="store_true", help="inputs are single-channel class-id PNGs; write class ids")
    p.add_argument("frames", nargs="+", metavar="CAM=IMAGE", help="one image per camera of the rig")
    p.set_defaults(func=run)


def parse_frame_args(pairs: list[str], camera_names: tuple[str, ...]) -> dict[str, str]:
    """CAM=PATH arguments to a mapping, checked against the rig's cameras."""
    frames: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise FrameError(f"expected CAM=IMAGE, got {pair!r}")
        if name in frames:
            raise FrameError(f"camera {name!r} given twice")
        frames[name] = path
    check_camera_set(frames.keys(), camera_names)
    return frames


def run(args: argparse.Namespace) -> int:
    rig = load_rig(args.rig)
    frames = parse_frame_args(args.frames, rig.camera_names)
    reader = read_labels if args.labels else read_image
    maps = [reader(frames[name]) for name in rig.camera_names]  # each camera's own size, in rig order
    projector = BevProjector(rig)
    try:
        out = projector.warp_labels(maps) if args.labels else projector.warp_image(maps)
    except ValueError as exc:
        raise FrameError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, out)
    meta = {
        "rig_id": rig.rig_id,
        "rig_version": rig.version,
        **rig.grid.metadata(),
        "content": "class ids" if args.labels else "RGB surround view",
        "cameras": list(rig.camera_names),
        "input_sizes_hw": {name: list(m.shape[:2]) for name, m in zip(rig.camera_names, maps, strict=True)},
        "camera_share": projector.tables.owner_share(),
        "unknown_share": float(((projector.tables.owner == -1) & ~projector.tables.ego).mean()),
        "ego_share": float(projector.tables.ego.mean()),
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info(
        "wrote %s (%s, %dx%d cells) and %s",
        args.out,
        meta["content"],
        rig.grid.cols,
        rig.grid.rows,
        args.out.with_suffix(".json"),
    )
    return 0
