"""``bev segment``: images of any camera and size through the network, to class-id maps of their own size.

bev segment --out build/seg front.jpg left.jpg          # build/seg/front.png (class ids, palette PNG)
bev segment --overlay --out build/seg frames/*.jpg      # and build/seg/front.overlay.png (colours over the frame)
bev segment --sheet seg.jpg --out build/seg frames/*.jpg  # and one picture of all the overlays in a row, with a legend
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.classes import palette
from bev_service.errors import FrameError
from bev_service.imageio import encode_label_png, read_image, write_image, write_png
from bev_service.shipped import PRUNED_MODEL

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5  # weight of the class colour over the frame
SHEET_TILE_HEIGHT = 240  # pixels of each image's overlay on the sheet


def register(commands: Any) -> None:
    p = commands.add_parser(
        "segment",
        help="images of any camera through the network: what it sees, before any rig",
        description="Run each image (PNG or JPEG, any size) through the network at its own aspect ratio and about "
        "the pixels the network was trained at. Writes DIR/<image name>.png: the class ids at the image's own size "
        "(a palette PNG: any viewer shows the class colours, its values are the ids of GET /v1/classes).",
    )
    p.add_argument("--model", type=Path, help="model file, .pt or .onnx (default: the shipped pruned model)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--input-pixels", type=int, help="pixels each image runs at (default: the model's training size)")
    p.add_argument("--overlay", action="store_true", help="also write DIR/<image name>.overlay.png, the colours over the image")
    p.add_argument(
        "--sheet", type=Path, help="also write one picture (PNG or JPEG by its name) of every overlay in a row, with a legend"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.set_defaults(func=run)


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The class colours blended over the image, (h, w, 3) uint8."""
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours[labels].astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def sheet(overlays: list[tuple[str, np.ndarray]], tile_height: int = SHEET_TILE_HEIGHT) -> np.ndarray:
    """The overlays side by side at one height, each named at its top left, over a class legend."""
    import cv2

    from bev_service.synth.contact_sheet import legend

    tiles = []
    for name, image in overlays:
        width = max(1, round(image.shape[1] * tile_height / image.shape[0]))
        tile = np.ascontiguousarray(cv2.resize(image, (width, tile_height), interpolation=cv2.INTER_AREA))
        cv2.putText(tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    row = np.concatenate(tiles, axis=1)
    return np.concatenate([row, legend(row.shape[1])], axis=0)


def run(args: argparse.Namespace) -> int:
    from bev_service.runtime.pipeline import segment_image
    from bev_service.runtime.segmenter import load_segmenter

    stems = [path.stem for path in args.images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise FrameError(f"two images would write {twice[0]}.png; give images of distinct names")
    if args.sheet is not None and args.sheet.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise FrameError(f"--sheet {args.sheet}: name a .png, .jpg or .jpeg file")
    segmenter = load_segmenter(args.model or PRUNED_MODEL, backend=args.backend)
    colours = palette()
    args.out.mkdir(parents=True, exist_ok=True)
    overlays = []
    for path in args.images:
        image = read_image(path)
        labels = segment_image(segmenter, image, args.input_pixels)
        (args.out / f"{path.stem}.png").write_bytes(encode_label_png(labels, colours))
        if args.overlay or args.sheet is not None:
            blended = overlay(image, labels, colours)
            if args.overlay:
                write_png(args.out / f"{path.stem}.overlay.png", blended)
            if args.sheet is not None:
                overlays.append((path.stem, blended))
        log.info("%s: %dx%d -> %s", path, image.shape[1], image.shape[0], args.out / f"{path.stem}.png")
    if args.sheet is not None:
        write_image(args.sheet, sheet(overlays))
        log.info("sheet of %d overlays -> %s", len(overlays), args.sheet)
    return 0
