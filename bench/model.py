"""Benchmark: the pruned network against the unpruned one it came from, and ONNX Runtime against PyTorch eager.

In one run, on the same inputs: parameters and multiply-accumulates per image at the model's input
size; CPU latency of one frame set (all four cameras in one batch) on PyTorch eager and on ONNX
Runtime, timed round-robin so that both meet the same load; image mIoU, and BEV mIoU against the
oracle (the warp of the true labels), on held-out synthetic frame sets.

Models: ``--unpruned models/enet.pt --pruned models/enet-pruned.pt`` by default; ONNX graphs beside
them (same name, ``.onnx``) are used when present, else exported to a temporary folder. The pruned
network also runs as its int8 graph (``bev quantize``): the shipped ``enet-pruned-int8.onnx`` when it
was quantized from the ``.onnx`` beside it, else quantized here on frames of the training data set. With
``--untrained`` (or when the shipped files are absent) both come from the default architecture,
untrained, the pruned one by a one-step prune at ``--ratio``: sizes and speeds hold, mIoU does not
(reported as null).

Run from the repository root: ``.venv/bin/python -m bench.model [--repeat N] [--quick] [--threads N]``. It prints
the ratios against the baselines (the unpruned network, PyTorch eager) measured in the same run, interleaved;
the last line printed is one JSON object:
``{"bench": "model", "macs_ratio", "cpu_speedup", "miou_drop", "ort_speedup", "ort_int8_speedup", ...}``
(ratios unpruned / pruned and torch / ORT, all on the CPU; the mIoU drop as a fraction).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import Timing, bench_parser, format_table, json_line, machine, time_interleaved
from bev_service.calib.rigfile import load_rig
from bev_service.geometry.projector import BevProjector
from bev_service.runtime.enet import ENet
from bev_service.runtime.int8 import int8_beside
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.segmenter import Segmenter
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL, UNPRUNED_MODEL
from bev_service.training.evaluate import evaluate
from bev_service.training.export import export_onnx
from bev_service.training.prune import prune_network
from bev_service.training.quantize import quantize_onnx
from bev_service.training.stats import count_params_macs
from bev_service.training.synthdata import render_source

REPO = Path(__file__).resolve().parents[1]
# A data set seed no training run, validation or prior correction saw (`bev train` trains on data set 0 and
# validates and tunes the prior correction on 100000): the mIoU drop is measured on unseen frame sets.
HELD_OUT_SEED = 300_000
CALIBRATION_SEED = 0  # int8 calibration frames come from the training data set, as `bev quantize` takes them

Pair = dict[str, tuple[ENet, ModelConfig, Path | None]]


def load_pair(args: Any) -> tuple[Pair, bool]:
    """The unpruned and pruned models (and their weight files), and whether they are trained."""
    from bev_service.runtime.weights import load_model

    paths = {"unpruned": Path(args.unpruned), "pruned": Path(args.pruned)}
    if not args.untrained and all(p.is_file() for p in paths.values()):
        return {k: (m.model, m.config, p) for k, p in paths.items() for m in [load_model(p)]}, True
    w, h = (int(v) for v in args.size.split("x")) if args.size else (480, 320)
    config = ModelConfig(width=args.width, input_size_hw=(h, w))
    torch.manual_seed(0)
    unpruned = config.build().eval()
    torch.manual_seed(0)
    pruned = config.build().eval()
    prune_network(pruned, config.input_size_hw, ratio=args.ratio, iterative_steps=1, after_step=lambda k: None)
    return {"unpruned": (unpruned, config, None), "pruned": (pruned, config.with_channels(pruned), None)}, False


def onnx_segmenter(
    model: ENet, config: ModelConfig, weights: Path | None, scratch: Path, name: str, threads: int
) -> OnnxSegmenter:
    shipped = weights.with_suffix(".onnx") if weights is not None else None
    if shipped is not None and shipped.is_file():
        return OnnxSegmenter(shipped, threads=threads)
    return OnnxSegmenter(export_onnx(model, config, scratch / f"{name}.onnx"), threads=threads)


def int8_segmenter(float_graph: OnnxSegmenter, scratch: Path, calibration_frame_sets: int, threads: int) -> OnnxSegmenter:
    shipped = int8_beside(float_graph.path)
    if shipped is not None:
        return OnnxSegmenter(shipped, threads=threads)
    rig = load_rig(DEFAULT_RIG)
    source = render_source(rig, count=calibration_frame_sets, seed=CALIBRATION_SEED, input_size_hw=float_graph.input_size_hw)
    images = np.concatenate([source[i].images for i in range(len(source))])
    where = f"synth data set {CALIBRATION_SEED}, frame sets 0-{calibration_frame_sets - 1}"
    return OnnxSegmenter(
        quantize_onnx(float_graph.path, scratch / "pruned-int8.onnx", images, calibration_data=where), threads=threads
    )


def segmenters(pair: Pair, scratch: Path, args: Any) -> dict[str, Segmenter]:
    out: dict[str, Segmenter] = {}
    for name, (model, config, weights) in pair.items():
        out[f"torch {name}"] = TorchSegmenter(model, config, device="cpu")
        if not args.no_onnx:
            out[f"onnxruntime {name}"] = onnx_segmenter(model, config, weights, scratch, name, args.threads)
    if not args.no_onnx and not args.no_int8:
        float_graph = out["onnxruntime pruned"]
        assert isinstance(float_graph, OnnxSegmenter)
        out["onnxruntime pruned int8"] = int8_segmenter(float_graph, scratch, args.calibration_frame_sets, args.threads)
    return out


def quality(segs: dict[str, Segmenter], frame_sets: int) -> dict[str, dict[str, Any]]:
    """Image mIoU and BEV mIoU against the oracle on held-out rendered frame sets: both models on torch, and
    the int8 graph (float ONNX Runtime gives torch's labels: tests/model/test_shipped.py)."""
    rig = load_rig(DEFAULT_RIG)
    size = segs["torch unpruned"].input_size_hw
    source = render_source(rig, count=frame_sets, seed=HELD_OUT_SEED, input_size_hw=size)
    projector = BevProjector(rig)
    out = {}
    for name in ("unpruned", "pruned", "pruned int8"):
        seg = segs.get(f"torch {name}") or segs.get(f"onnxruntime {name}")
        if seg is not None:
            report = evaluate(seg, source, projector=projector).report()
            out[name] = {"image_miou": report["image"]["miou"], "bev_vs_oracle_miou": report["bev_vs_oracle"]["miou"]}
    return out


def measure(args: Any) -> tuple[list[Timing], dict[str, Any]]:
    pair, trained = load_pair(args)
    size = pair["unpruned"][1].input_size_hw
    images = np.random.default_rng(0).integers(0, 256, size=(args.cameras, *size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        segs = segmenters(pair, Path(scratch), args)
        timings = time_interleaved({k: (lambda s=s: s.segment(images)) for k, s in segs.items()}, repeat=args.repeat, warmup=2)
        q = quality(segs, args.frame_sets) if trained else None
    median = {t.name: t.median_ms for t in timings}
    sizes = {k: count_params_macs(m, size) for k, (m, _, _) in pair.items()}
    figures: dict[str, Any] = {
        "macs_ratio": sizes["unpruned"][1] / sizes["pruned"][1],
        "cpu_speedup": median["torch unpruned"] / median["torch pruned"],
        "miou_drop": None,
        "ort_speedup": median["torch pruned"] / median["onnxruntime pruned"] if not args.no_onnx else None,
    }
    if not args.no_onnx:
        figures["ort_speedup_unpruned"] = median["torch unpruned"] / median["onnxruntime unpruned"]
        figures["ort_cpu_speedup"] = median["onnxruntime unpruned"] / median["onnxruntime pruned"]
    if "onnxruntime pruned int8" in median:
        figures["ort_int8_speedup"] = median["torch pruned"] / median["onnxruntime pruned int8"]
        figures["int8_speedup"] = median["onnxruntime pruned"] / median["onnxruntime pruned int8"]  # over the float graph
        figures["int8_quantization"] = segs["onnxruntime pruned int8"].quantization  # type: ignore[attr-defined]
    if q is not None:
        figures["miou_drop"] = q["unpruned"]["image_miou"] - q["pruned"]["image_miou"]
        figures["bev_miou_drop"] = q["unpruned"]["bev_vs_oracle_miou"] - q["pruned"]["bev_vs_oracle_miou"]
        if "pruned int8" in q:
            figures["int8_miou_drop"] = q["pruned"]["image_miou"] - q["pruned int8"]["image_miou"]  # against float
        figures["quality"] = q
    figures.update(
        trained=trained,
        input_size_hw=list(size),
        cameras=args.cameras,
        params={k: v[0] for k, v in sizes.items()},
        gmacs_per_image={k: v[1] / 1e9 for k, v in sizes.items()},
        latency_ms=median,
        torch_threads=torch.get_num_threads(),
        ort_threads=args.threads or "one per core",
        machine=machine(),
    )
    return timings, figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "model bench", default_repeat=20)
    parser.add_argument("--unpruned", default=str(UNPRUNED_MODEL))
    parser.add_argument("--pruned", default=str(PRUNED_MODEL))
    parser.add_argument("--untrained", action="store_true", help="untrained default architecture, pruned in one step")
    parser.add_argument("--ratio", type=float, default=0.4, help="pruning ratio with --untrained")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier with --untrained")
    parser.add_argument("--size", help="input WxH with --untrained (default 480x320)")
    parser.add_argument("--cameras", type=int, default=4, help="images per timed batch (one frame set)")
    parser.add_argument("--frame-sets", type=int, default=16, help="held-out frame sets for mIoU")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime (no export)")
    parser.add_argument("--no-int8", action="store_true", help="skip the pruned network's int8 graph")
    parser.add_argument("--calibration-frame-sets", type=int, default=8, help="when quantizing here: calibration frame sets")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their defaults)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeat, args.frame_sets = min(args.repeat, 3), min(args.frame_sets, 2)
        args.calibration_frame_sets = min(args.calibration_frame_sets, 1)
    timings, figures = measure(args)
    print(format_table(timings, reference=timings[0]))
    print(f"parameters {figures['params']}, GMACs per image {figures['gmacs_per_image']}, trained: {figures['trained']}")
    print(f"machine: {figures['machine']} (torch threads {figures['torch_threads']})")
    print(json_line("model", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
