"""Benchmark: four 960x640 JPEG frames to an encoded 400x400 BEV grid, in process (``BevPipeline``).

Stages: decode (four JPEGs, threads), resize to the network input, segment (argmax on the backend's
device), one-gather warp on that device, grid to the host, PNG encode. Frames are synthetic frame
sets of the default rig (held-out worlds), cycled. Reported: median and p99 latency of a frame set,
the median of every stage, and the bytes handed from the backend to the host per frame set (the
grid's 160000 with torch; the label maps with ONNX Runtime, whose warp runs on the host). With ONNX
Runtime, the baseline is the same pipeline on ONNX Runtime's default session, whose worker threads spin
between runs and take the cores from the JPEG decoding (``speedup_vs_spinning``).
With a CUDA GPU, also the torch-CUDA latency and the throughput of batched frame sets. When the real
pjlab road recording is present (``BEV_REAL_DATA``), also its rig of 1280x1080 fisheyes on its recorded
frame set (``real_rig``: each camera at its own network size).

Model: ``--model``; by default the shipped pruned model as the service on a CPU picks it
(``resolve_model``: ``models/enet-pruned-int8.onnx`` when it is current, else ``enet-pruned.onnx``, else
the ``.pt``; ``--float`` skips the int8 graph); without a shipped model, the default architecture
untrained and pruned in one step at ``--ratio`` (speed only).

Run from the repository root: ``.venv/bin/python -m bench.pipeline [--repeat N] [--quick] [--backend torch|onnx]``.
With ONNX Runtime it prints the ratio against the spinning-threads baseline measured in the same run
(``speedup_vs_spinning``); the last line printed is one JSON object:
``{"bench": "pipeline", "median_ms", "p99_ms", "device_to_host_bytes", ...}``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import Timing, bench_parser, format_table, json_line, machine, time_call
from bev_service.calib.importers import import_kdt_json
from bev_service.calib.rigfile import load_rig
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.resize import resize_images
from bev_service.runtime.segmenter import Segmenter, load_segmenter
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.service.settings import Settings
from bev_service.service.state import resolve_model
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL
from bev_service.synth import iter_frame_sets
from bev_service.training.export import export_onnx
from bev_service.training.prune import prune_network

HELD_OUT_SEED = 100_000
# A real rig of another camera shape, timed beside the default one when the recording is here (timing only).
REAL_DATA = Path(os.environ.get("BEV_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
REAL_RIG = "pjlab-4fisheye-road"  # four 1280x1080 fisheyes


def real_rig_frames() -> tuple[Rig, list[dict[str, bytes]]] | None:
    """The pjlab road rig (kdt-json) and its one recorded frame set, or None when the recording is absent."""
    folder = REAL_DATA / REAL_RIG
    if not folder.is_dir():
        return None
    rig = import_kdt_json(folder / "calibration_from_source.json").rig
    return rig, [{cam: (folder / "imgs" / f"{cam.capitalize()}.jpg").read_bytes() for cam in rig.camera_names}]


def frame_sets(rig: Rig, count: int) -> list[dict[str, bytes]]:
    """``count`` rendered frame sets of the rig at full resolution, as the JPEG files a client sends."""
    return [dict(fs.jpeg) for _, _, fs in iter_frame_sets(rig, count=count, seed=HELD_OUT_SEED, scale=1.0)]


def choose_segmenter(args: Any, scratch: Path) -> tuple[Segmenter, str]:
    """The segmenter to time and a note on where its model came from."""
    if args.model:
        return load_segmenter(args.model, backend=args.backend), str(args.model)
    if PRUNED_MODEL.is_file():
        settings = Settings(model=PRUNED_MODEL, backend=args.backend, device="cpu", int8=not args.float)
        path, backend = resolve_model(settings)
        return load_segmenter(path, backend=backend, device="cpu"), str(path)
    config = ModelConfig()
    torch.manual_seed(0)
    model = config.build().eval()
    prune_network(model, config.input_size_hw, ratio=args.ratio, iterative_steps=1, after_step=lambda k: None)
    config = config.with_channels(model)
    note = f"untrained default architecture pruned at {args.ratio} (speed only)"
    if args.backend == "torch":
        return TorchSegmenter(model, config, device="cpu"), note
    return OnnxSegmenter(export_onnx(model, config, scratch / "untrained.onnx")), note


def time_pipeline(pipeline: BevPipeline, frames: list[dict[str, bytes]], repeat: int, name: str) -> tuple[Timing, dict[str, Any]]:
    counter = iter(range(10**9))
    results = []

    def one() -> None:
        results.append(pipeline.run(frames[next(counter) % len(frames)]))

    timing = time_call(one, repeat=repeat, warmup=3, name=name)
    timed = results[-repeat:]
    stages = {k: float(np.median([r.timings_ms[k] for r in timed])) for k in timed[0].timings_ms}
    return timing, {
        "stages_ms": stages,
        "device_to_host_bytes": timed[-1].device_to_host_bytes,
        "grid_bytes": timed[-1].grid.nbytes,
    }


def cuda_throughput(
    segmenter: TorchSegmenter, projector: BevProjector, frames: list[np.ndarray], batch: int, repeat: int
) -> float:
    """Frame sets per second when ``batch`` decoded, resized frame sets go through the network at once
    and are warped on the GPU (only the grids come back)."""
    images = torch.from_numpy(np.concatenate([frames[i % len(frames)] for i in range(batch)])).cuda()
    n = frames[0].shape[0]

    def one() -> None:
        labels = segmenter.segment(images).labels
        grids = torch.stack([projector.warp_labels(labels[i * n : (i + 1) * n]) for i in range(batch)])
        grids.cpu()

    return batch / (time_call(one, repeat=repeat, warmup=3).median_ms / 1e3)


def measure_cuda(rig: Rig, args: Any, frames: list[dict[str, bytes]], projector: BevProjector) -> tuple[Timing, dict[str, Any]]:
    import cv2

    config = ModelConfig()
    source = Path(args.model) if args.model else PRUNED_MODEL
    if source.suffix == ".pt" and source.is_file():
        from bev_service.runtime.weights import load_model

        loaded = load_model(source)
        model, config = loaded.model, loaded.config
    else:
        model = config.build().eval()
    segmenter = TorchSegmenter(model, config, device="cuda")
    timing, figures = time_pipeline(BevPipeline(rig, segmenter, projector=projector), frames, args.repeat, "pipeline torch-cuda")
    decoded = [
        resize_images(
            np.stack([cv2.imdecode(np.frombuffer(fs[n], np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for n in rig.camera_names]),
            config.input_size_hw,
        )
        for fs in frames
    ]
    figures["throughput_frame_sets_per_s"] = {
        b: cuda_throughput(segmenter, projector, decoded, b, args.repeat) for b in (1, 8, 32)
    }
    return timing, figures


def measure(args: Any) -> tuple[list[Timing], dict[str, Any]]:
    rig = load_rig(DEFAULT_RIG)
    frames = frame_sets(rig, 1 if args.quick else 4)
    projector = BevProjector(rig)
    baseline = None
    with tempfile.TemporaryDirectory() as scratch:
        segmenter, note = choose_segmenter(args, Path(scratch))
        pipeline = BevPipeline(rig, segmenter, projector=projector)
        timing, details = time_pipeline(pipeline, frames, args.repeat, f"pipeline {segmenter.backend}")
        pipeline.close()
        real = None if args.quick else real_rig_frames()
        if real is not None:
            real_pipeline = BevPipeline(real[0], segmenter)
            real_timing, real_details = time_pipeline(
                real_pipeline, real[1], args.repeat, f"pipeline {segmenter.backend}, {REAL_RIG}"
            )
            real_sizes = real_pipeline.input_sizes_hw
            real_pipeline.close()
        if isinstance(segmenter, OnnxSegmenter):
            # The baseline: the same graph with ONNX Runtime's default of worker threads that busy-wait between runs.
            # Timed after, not interleaved: a spinning session slows whatever runs next, so alternating would
            # charge its cost to the other side.
            spinning = BevPipeline(rig, OnnxSegmenter(segmenter.path, spin=True), projector=projector)
            baseline, _ = time_pipeline(spinning, frames, args.repeat, "baseline: ONNX Runtime default (spinning threads)")
            spinning.close()
    timings = [timing, *([baseline] if baseline else []), *([real_timing] if real is not None else [])]
    figures: dict[str, Any] = {
        "median_ms": timing.median_ms,
        "p99_ms": timing.p99_ms,
        "baseline_median_ms": baseline.median_ms if baseline else None,
        "speedup_vs_spinning": baseline.median_ms / timing.median_ms if baseline else None,
        "device_to_host_bytes": details["device_to_host_bytes"],
        "grid_bytes": details["grid_bytes"],
        "stages_ms": details["stages_ms"],
        "backend": segmenter.backend,
        "model": note,
        "input_size_hw": list(segmenter.input_size_hw),
        "frame_size_hw": list(rig.cameras[0].image_size_hw),
    }
    if real is not None:
        figures["real_rig"] = {
            "rig": REAL_RIG,
            "frame_size_hw": list(real[0].cameras[0].image_size_hw),
            "input_sizes_hw": [list(size) for size in real_sizes],
            "median_ms": real_timing.median_ms,
            "p99_ms": real_timing.p99_ms,
            "stages_ms": real_details["stages_ms"],
        }
    if torch.cuda.is_available() and not args.quick:
        cuda_timing, cuda = measure_cuda(rig, args, frames, projector)
        timings.append(cuda_timing)
        figures["cuda"] = {"median_ms": cuda_timing.median_ms, "p99_ms": cuda_timing.p99_ms, **cuda}
    figures["machine"] = machine()
    return timings, figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "pipeline bench", default_repeat=50)
    parser.add_argument("--model", help="model file (.pt or .onnx); default: the shipped pruned model")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--float", action="store_true", help="the shipped float ONNX graph, not its int8 graph")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio of the untrained stand-in model")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 5)
    timings, figures = measure(args)
    print(format_table(timings))
    print("stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in figures["stages_ms"].items()))
    if figures["speedup_vs_spinning"]:
        print(f"against ONNX Runtime's default spinning threads: {figures['speedup_vs_spinning']:.2f}x")
    print(f"model: {figures['model']}; machine: {figures['machine']}")
    print(json_line("pipeline", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
