"""``bev synth``: synthetic surround-view data sets, drives and contact sheets.

bev synth --count 100 --seed 1 --out build/synth
bev synth --drive --frames 100 --speed-mps 8 --fps 10 --seed 1 --out build/drive
bev synth --drive --frames 100 --seed 1 --mcap build/drive.mcap     # a recording: one CompressedImage topic per camera
bev synth --count 3 --seed 1 --contact-sheet docs/synth/contact_sheet.png
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bev_service.calib.rigfile import load_rig
from bev_service.errors import BevError
from bev_service.geometry.rig import Rig
from bev_service.imageio import write_png
from bev_service.recordings.mcap_out import IMAGE_ENCODINGS, CameraRecordingWriter, ImageEncoding
from bev_service.shipped import DEFAULT_RIG
from bev_service.synth.contact_sheet import contact_sheet
from bev_service.synth.dataset import iter_frame_sets, world_seed, write_dataset, write_drive
from bev_service.synth.drive import DriveFrame, DrivePlan, iter_drive
from bev_service.synth.render import RenderedFrameSet
from bev_service.synth.world import SyntheticWorld

SHEET_FRAME_SETS = 3
DRIVE_EPOCH_NS = 1_700_000_000 * 1_000_000_000  # capture time of a recorded drive's first frame set (2023-11-14)
MAX_COUNT = 1_000_000


class SynthArgumentError(BevError):
    """Options of ``bev synth`` that do not fit together."""


def register(commands: Any) -> None:
    p = commands.add_parser(
        "synth",
        help="render synthetic surround-view frame sets with exact labels",
        description="Render frame sets of seeded procedural worlds through the rig's camera models: per-camera JPEG "
        "images and label maps, the true BEV grid and the oracle BEV (the projector's warp of the true labels), with a "
        "manifest. --drive renders a sequence along the world's ring road; --contact-sheet writes a picture of a few "
        "frame sets. The same seed gives byte-identical files.",
    )
    p.add_argument("--rig", help="rig file (default: the shipped default rig)")
    p.add_argument("--count", type=int, help="number of frame sets (data set mode)")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds, poses and appearance (default 0)")
    p.add_argument("--out", type=Path, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--scale", type=float, default=1.0, help="image size as a fraction of the rig's (default 1)")
    p.add_argument("--overwrite", action="store_true", help="write into an output folder that is not empty")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    drive = p.add_argument_group("drive")
    drive.add_argument("--drive", action="store_true", help="render a drive along the ring road instead")
    drive.add_argument("--frames", type=int, help="frame sets in the drive (default 100)")
    drive.add_argument("--speed-mps", type=float, help="vehicle speed in m/s (default 8)")
    drive.add_argument("--fps", type=float, help="frame sets per second (default 10)")
    drive.add_argument("--start-m", type=float, help="start position along the route in metres (default 0)")
    drive.add_argument(
        "--mcap",
        type=Path,
        metavar="OUT.mcap",
        help="also (or only) write the drive as a recording: each camera's JPEGs on /cam/<camera>/compressed, "
        "stamped with their capture time (what bev replay reads)",
    )
    drive.add_argument(
        "--mcap-encoding",
        choices=IMAGE_ENCODINGS,
        help="message type of the images: ros2 (sensor_msgs/msg/CompressedImage, the default), json or protobuf "
        "(foxglove.CompressedImage)",
    )
    p.add_argument(
        "--contact-sheet",
        type=Path,
        metavar="OUT.png",
        help=f"also (or only) write a contact sheet of {SHEET_FRAME_SETS} frame sets",
    )
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Raise SynthArgumentError when the options do not fit together."""
    if args.out is None and args.contact_sheet is None and args.mcap is None:
        raise SynthArgumentError("nothing to write: give --out DIR, --contact-sheet OUT.png, --mcap OUT.mcap (with --drive)")
    if not args.drive and (args.mcap is not None or args.mcap_encoding is not None):
        raise SynthArgumentError("--mcap and --mcap-encoding only apply with --drive")
    if args.mcap is not None and args.mcap.suffix.lower() != ".mcap":
        raise SynthArgumentError(f"--mcap must name a .mcap file, got {args.mcap}")
    if args.seed < 0:
        raise SynthArgumentError(f"--seed must be >= 0, got {args.seed}")
    if not 0.05 <= args.scale <= 2.0:
        raise SynthArgumentError(f"--scale must be between 0.05 and 2, got {args.scale}")
    drive_opts = [name for name in ("frames", "speed_mps", "fps", "start_m") if getattr(args, name) is not None]
    if args.drive:
        if args.count is not None:
            raise SynthArgumentError("--count does not apply to --drive; give the drive's length with --frames")
    else:
        if drive_opts:
            flags = ", ".join("--" + n.replace("_", "-") for n in drive_opts)
            raise SynthArgumentError(f"{flags} only apply with --drive")
        if args.out is not None and args.count is None:
            raise SynthArgumentError("--count N is required to write a data set")
        if args.count is not None and not 1 <= args.count <= MAX_COUNT:
            raise SynthArgumentError(f"--count must be between 1 and {MAX_COUNT}, got {args.count}")
    if args.out is not None and args.out.exists():
        if not args.out.is_dir():
            raise SynthArgumentError(f"--out {args.out} exists and is not a folder")
        if any(args.out.iterdir()) and not args.overwrite:
            raise SynthArgumentError(f"--out {args.out} is not empty; choose another folder or pass --overwrite")
    if args.contact_sheet is not None and args.contact_sheet.suffix.lower() != ".png":
        raise SynthArgumentError(f"--contact-sheet must name a .png file, got {args.contact_sheet}")


def _drive_plan(args: argparse.Namespace) -> DrivePlan:
    try:
        return DrivePlan(
            frames=100 if args.frames is None else args.frames,
            speed_mps=8.0 if args.speed_mps is None else args.speed_mps,
            fps=10.0 if args.fps is None else args.fps,
            start_s_m=0.0 if args.start_m is None else args.start_m,
        )
    except ValueError as exc:
        raise SynthArgumentError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    check_args(args)
    # The manifest names the shipped rig by its place in the package, so it is the same on every machine.
    rig_path = args.rig or str(DEFAULT_RIG.relative_to(DEFAULT_RIG.parents[2]))
    rig = load_rig(args.rig or DEFAULT_RIG)
    plan = _drive_plan(args) if args.drive else None
    if plan is not None and (args.out is not None or args.mcap is not None):
        encoding: ImageEncoding = args.mcap_encoding or "ros2"
        with (
            tqdm(total=plan.frames, desc="bev synth", unit="frame set", disable=args.no_progress) as bar,
            drive_recorder(args.mcap, rig, plan, seed=args.seed, scale=args.scale, encoding=encoding) as record,
        ):
            if args.out is not None:
                write_drive(args.out, rig, rig_path, plan, seed=args.seed, scale=args.scale, progress=bar.update, on_frame=record)
            else:
                world = SyntheticWorld(world_seed(args.seed, 0))  # the world write_drive renders
                for frame in iter_drive(rig, world, plan, seed=args.seed, scale=args.scale):
                    record(frame)
                    bar.update(1)
    elif args.out is not None:
        with tqdm(total=args.count, desc="bev synth", unit="frame set", disable=args.no_progress) as bar:
            write_dataset(args.out, rig, rig_path, count=args.count, seed=args.seed, scale=args.scale, progress=bar.update)
    if args.contact_sheet is not None:
        frame_sets = _sheet_frame_sets(rig, args, plan)
        args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
        write_png(args.contact_sheet, contact_sheet(frame_sets))
    return 0


@contextmanager
def drive_recorder(
    path: Path | None, rig: Rig, plan: DrivePlan, *, seed: int, scale: float, encoding: ImageEncoding
) -> Iterator[Callable[[DriveFrame], None]]:
    """A function that records each frame set of a drive into the MCAP ``path`` (nothing when None): frame set k's
    images stamped DRIVE_EPOCH_NS + k / fps, each camera logged a millisecond after the one before it (as a transport
    would deliver them). Written beside its name and renamed into place once complete."""
    if path is None:
        yield lambda frame: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with CameraRecordingWriter(partial, encoding=encoding) as writer:
            provenance = {"rig_id": rig.rig_id, "rig_fingerprint": rig.fingerprint, "seed": seed, "scale": scale,
                          "frames": plan.frames, "fps": plan.fps, "speed_mps": plan.speed_mps}  # fmt: skip
            writer.writer.add_metadata("bev.synth", {k: str(v) for k, v in provenance.items()})

            def record(frame: DriveFrame) -> None:
                stamp_ns = DRIVE_EPOCH_NS + round(frame.timestamp_s * 1e9)
                for i, name in enumerate(frame.frame_set.camera_names):
                    log_ns = stamp_ns + (i + 1) * 1_000_000
                    writer.write_image(name, stamp_ns, frame.frame_set.jpeg[name], log_time_ns=log_ns)

            yield record
    except BaseException:  # a drive cut short is no recording: leave nothing that looks like one
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)


def _sheet_frame_sets(rig: Any, args: argparse.Namespace, plan: DrivePlan | None) -> list[RenderedFrameSet]:
    """The first few frame sets of the data set (or frames spread over the drive), rendered again:
    rendering is deterministic, so they are the ones written."""
    if plan is None:
        count = min(args.count or SHEET_FRAME_SETS, SHEET_FRAME_SETS)
        return [fs for _, _, fs in iter_frame_sets(rig, count=count, seed=args.seed, scale=args.scale)]
    step = max(1, plan.frames // SHEET_FRAME_SETS)
    indices = range(0, plan.frames, step)[:SHEET_FRAME_SETS]
    world = SyntheticWorld(world_seed(args.seed, 0))
    return [f.frame_set for f in iter_drive(rig, world, plan, seed=args.seed, scale=args.scale, indices=indices)]
