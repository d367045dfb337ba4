"""``bev segment``: images of any camera and size through the network, to class-id maps of their own size.

bev segment --out build/seg front.jpg left.jpg          # build/seg/front.png (class ids, palette PNG)
bev segment --overlay --out build/seg frames/*.jpg      # and build/seg/front.overlay.png (colours over the frame)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.classes import palette
from bev_service.errors import FrameError
from bev_service.imageio import encode_label_png, read_image, write_png
from bev_service.shipped import PRUNED_MODEL

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5  # weight of the class colour over the frame


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
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.set_defaults(func=run)


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The class colours blended over the image, (h, w, 3) uint8."""
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours[labels].astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def run(args: argparse.Namespace) -> int:
    from bev_service.runtime.pipeline import segment_image
    from bev_service.runtime.segmenter import load_segmenter

    stems = [path.stem for path in args.images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise FrameError(f"two images would write {twice[0]}.png; give images of distinct names")
    segmenter = load_segmenter(args.model or PRUNED_MODEL, backend=args.backend)
    colours = palette()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = read_image(path)
        labels = segment_image(segmenter, image, args.input_pixels)
        (args.out / f"{path.stem}.png").write_bytes(encode_label_png(labels, colours))
        if args.overlay:
            write_png(args.out / f"{path.stem}.overlay.png", overlay(image, labels, colours))
        log.info("%s: %dx%d -> %s", path, image.shape[1], image.shape[0], args.out / f"{path.stem}.png")
    return 0
