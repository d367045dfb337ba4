"""``bev replay``: recorded drives (MCAP files, rosbag2 folders) through the pipeline, to BEV grids.

bev replay drive.mcap --out build/replay                          # build/replay/drive.mcap: foxglove.Grid, OccupancyGrid
bev replay a.mcap bag_folder --out build/replay --format parquet  # one table per drive
bev replay drive.mcap --out build/replay --start 12.5 --end 40    # 12.5 s to 40 s into the drive only
bev replay drive.mcap --out build/replay --format png --topics front=/cam/front/compressed,rear=/cam/rear/compressed
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bev_service.calib.rigfile import load_rig
from bev_service.cli.replay_ray import add_ray_arguments, check_ray_args, run_on_ray
from bev_service.errors import BevError
from bev_service.recordings.outputs import FORMATS
from bev_service.recordings.replay import RecordingSummary, ReplayOptions, describe_window, replay_recordings
from bev_service.recordings.sources import Recording
from bev_service.recordings.sync import DEFAULT_TOLERANCE_MS
from bev_service.recordings.topics import parse_topic_map
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL

log = logging.getLogger(__name__)

MAX_REASONS = 20  # skipped frame sets listed one by one in the summary, per recording
MAX_BATCH = 64


class ReplayArgumentError(BevError):
    """Options of ``bev replay`` that do not fit together."""


def register(commands: Any) -> None:
    p = commands.add_parser(
        "replay",
        help="recorded drives (MCAP, rosbag2) through the pipeline, to BEV grids",
        description="Read each recording's camera topics (sensor_msgs/msg/CompressedImage, foxglove.CompressedImage), "
        "group the images into frame sets by capture time, run each through the network and the BEV warp, and write "
        "DIR/<drive>.mcap (foxglove.Grid, nav_msgs/msg/OccupancyGrid, transforms, calibrations), DIR/<drive>.parquet or "
        "DIR/<drive>/<time_ns>.png. Outputs already written are skipped; a recording that cannot be read is reported and "
        "the others still run (exit code 1).",
    )
    p.add_argument("recordings", nargs="+", type=Path, metavar="RECORDING", help="MCAP files or rosbag2 folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--format", default="mcap", choices=FORMATS, help="output format (default mcap)")
    p.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="where the pipeline runs (default local: in this process; ray: shards over a pool of Ray actors)",
    )
    p.add_argument("--rig", type=Path, help="rig file (default: the shipped default rig)")
    p.add_argument("--model", type=Path, help="model file, .pt or .onnx (default: the shipped pruned model)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--topics", metavar="CAM=TOPIC,...", help="each camera's topic (default: the topic named after it)")
    p.add_argument(
        "--tolerance-ms",
        type=float,
        default=DEFAULT_TOLERANCE_MS,
        help=f"largest capture-time spread in a frame set (default {DEFAULT_TOLERANCE_MS:g} ms)",
    )
    p.add_argument(
        "--start",
        type=float,
        metavar="SECONDS",
        help="replay from this time on, in seconds since the recording's first message (default: its start)",
    )
    p.add_argument(
        "--end",
        type=float,
        metavar="SECONDS",
        help="replay up to this time (not included), in seconds since the recording's first message (default: its end)",
    )
    p.add_argument("--batch", type=int, default=4, help="frame sets per network call (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bev_service.runtime.int8 import file_sha256
    from bev_service.runtime.pipeline import BevPipeline
    from bev_service.runtime.segmenter import load_segmenter

    if not 0 <= args.tolerance_ms < 1000:
        raise ReplayArgumentError(f"--tolerance-ms must be between 0 and 1000, got {args.tolerance_ms}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ReplayArgumentError(f"--batch must be between 1 and {MAX_BATCH}, got {args.batch}")
    if args.start is not None and not args.start >= 0:
        raise ReplayArgumentError(f"--start must be 0 s or later, got {args.start:g}")
    if args.end is not None and not args.end > (args.start or 0.0):
        raise ReplayArgumentError(f"--end must come after --start ({args.start or 0.0:g} s), got {args.end:g}")
    check_ray_args(args)
    topic_map = parse_topic_map(args.topics)
    rig = load_rig(args.rig or DEFAULT_RIG)
    model = args.model or PRUNED_MODEL
    options = ReplayOptions(
        fmt=args.format,
        model_sha256=file_sha256(model),
        topic_map=topic_map,
        tolerance_ms=args.tolerance_ms,
        batch_size=args.batch,
        window=(args.start, args.end),
    )
    if args.engine == "ray":
        return report(run_on_ray(args, rig, model, options), args)
    pipeline = BevPipeline(rig, load_segmenter(model, backend=args.backend), encoder=None)
    try:
        with tqdm(total=0, desc="bev replay", unit="frame set", disable=args.no_progress) as bar:

            def opened(recording: Recording) -> None:
                bar.total = (bar.total or 0) + max(recording.message_counts.values(), default=0)
                bar.set_postfix_str(recording.name)
                bar.refresh()

            summaries = replay_recordings(args.recordings, args.out, pipeline, options, progress=bar.update, on_open=opened)
    finally:
        pipeline.close()
    return report(summaries, args)


def report(summaries: list[RecordingSummary], args: argparse.Namespace) -> int:
    for summary in summaries:
        print(summary_line(summary, args.out, args.format, describe_window((args.start, args.end))))
    if len(summaries) > 1:
        print(total_line(summaries))
    return 1 if any(s.error for s in summaries) else 0


def summary_line(summary: RecordingSummary, out: Path, fmt: str, window: str = "all") -> str:
    """One recording's outcome: frame sets written, already there, skipped with their reasons; or its error.
    ``window``: the part of the recording replayed, as ``describe_window`` gives it."""
    if summary.error:
        return f"{summary.path}: FAILED: {summary.error}"
    if summary.already_written < 0:
        return f"{summary.path}: already written in {out}, skipped"
    text = f"{summary.path}: {summary.written} frame sets written ({fmt}{'' if window == 'all' else f', {window}'})"
    if summary.already_written:
        text += f", {summary.already_written} already written"
    text += f", {len(summary.skipped)} skipped"
    reasons = [f"  skipped {s.time_ns / 1e9:.3f} s: {s.reason}" for s in summary.skipped[:MAX_REASONS]]
    if len(summary.skipped) > MAX_REASONS:
        reasons.append(f"  ... and {len(summary.skipped) - MAX_REASONS} more skipped")
    return "\n".join([text, *reasons])


def total_line(summaries: list[RecordingSummary]) -> str:
    failed = sum(1 for s in summaries if s.error)
    written, skipped = sum(s.written for s in summaries), sum(len(s.skipped) for s in summaries)
    return f"{len(summaries)} recordings: {written} frame sets written, {skipped} skipped, {failed} failed"
