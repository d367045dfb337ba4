"""``bev train``, ``eval``, ``prune``, ``export``, ``quantize`` and ``infer``: the segmentation network's commands.

Training and pruning settings are dataclasses (``TrainConfig``, ``PruneConfig``); every field is a
flag of the same name (``--crop-height 192``), so a checkpoint's stored config reads like its command.
``--recipe FILE`` (a recipe file, or a name in ``bev_service/training/recipes/``: ``shipped``) sets them
first; the flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from bev_service.calib.rigfile import load_rig
from bev_service.cli.project import parse_frame_args
from bev_service.errors import FrameError
from bev_service.imageio import read_image, write_png
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL
from bev_service.training.config import PruneConfig, TrainConfig, read_recipe

log = logging.getLogger(__name__)

# Descriptions are kept here, not read from the modules' docstrings: importing those imports torch,
# which would slow down every ``bev`` command.
TRAIN_DOC = (
    "Train the ENet-family network on synthetic frame sets (rendered up front with --data synth, or a bev synth "
    "folder): class-weighted cross-entropy, augmentation, AdamW with warm-up and cosine decay. Writes OUT_DIR/"
    "checkpoint.pt (resumable with --resume; it stores this config), metrics.jsonl, curves.png and model.pt."
)
EVAL_DOC = (
    "Per-class IoU and mIoU of a model in image space and in BEV space (against the true BEV on cells a camera "
    "sees), beside the oracle (the warp of the true labels), on held-out synthetic frame sets; a table, and JSON. "
    "With --real, on real recordings annotated by hand (evaluation/real/*.json): image, body and BEV scores per "
    "recording and pooled."
)
PRUNE_DOC = (
    "Structured L1-norm channel pruning (Torch-Pruning, channel counts multiples of 8, class head kept) in "
    "iterative steps with fine-tuning between them; writes the pruned weights-only model and a report (parameters, "
    "MACs, CPU latency and mIoU before and after) beside it as JSON."
)
EXPORT_DOC = (
    "Export a model to ONNX with its input conversion and argmax head inside the graph (uint8 NHWC in, uint8 labels "
    "out, optionally the softmax maximum), and check that ONNX Runtime gives torch's labels."
)
QUANTIZE_DOC = (
    "Quantize an exported ONNX graph to int8 for ONNX Runtime on CPU (static: int8 weights per channel, uint8 "
    "activations with ranges calibrated on rendered training frames), then compare its labels with the float graph's "
    "on held-out frames, overall and per class."
)
INFER_DOC = (
    "Run the in-process pipeline on one frame set: decode, resize, segment, warp onto the rig's BEV grid. Writes the "
    "grid of class ids as a single-channel PNG and OUT.json with its metadata and per-stage timings."
)


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Any], *, recipe: bool = False) -> None:
    """One flag per dataclass field, typed from the field; with ``recipe``, also ``--recipe FILE``.

    A flag left out is absent from the parsed namespace (its default is the field's, or the recipe's),
    so that ``config_from_args`` can tell the flags given from the ones a recipe sets.
    """
    kinds = {"int": int, "float": float, "str": str}
    if recipe:
        parser.add_argument("--recipe", help="recipe file, or a recipe name ('shipped'): settings that flags override")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type=kinds[str(f.type)], default=argparse.SUPPRESS, help=f"default: {f.default}")


def config_from_args(cls: type[Any], args: argparse.Namespace, *, command: str | None = None) -> Any:
    """The config of the flags given, over the recipe's settings (``--recipe``, read for ``command``), over the defaults."""
    try:
        values = read_recipe(args.recipe, command) if command and getattr(args, "recipe", None) else {}
        values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
        return cls(**values)
    except ValueError as exc:
        raise FrameError(f"bad settings: {exc}") from exc


def register(commands: Any) -> None:
    p = commands.add_parser("train", help="train the segmentation network on synthetic frame sets", description=TRAIN_DOC)
    add_config_flags(p, TrainConfig, recipe=True)
    p.set_defaults(func=run_train)
    _register_eval(commands)
    p = commands.add_parser("prune", help="L1 channel pruning with fine-tuning, and a before/after report", description=PRUNE_DOC)
    add_config_flags(p, PruneConfig, recipe=True)
    p.set_defaults(func=run_prune)
    _register_export(commands)
    _register_quantize(commands)
    _register_infer(commands)


def _register_eval(commands: Any) -> None:
    p = commands.add_parser("eval", help="per-class IoU / mIoU in image and BEV space", description=EVAL_DOC)
    p.add_argument("--model", required=True, help="model file (.pt weights or .onnx)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--data", default=None, help="'synth' (render held-out worlds, the default) or a directory from bev synth"
    )
    source.add_argument(
        "--real",
        nargs="+",
        type=Path,
        metavar="ANNOTATIONS",
        help="annotation files of real recordings (evaluation/real/*.json): score on those instead of synthetic data",
    )
    p.add_argument(
        "--real-data",
        type=Path,
        metavar="DIR",
        help="folder of the real recordings that --real reads (default: $BEV_REAL_DATA, else ../shared/data/real)",
    )
    p.add_argument("--rig", default=str(DEFAULT_RIG), help="rig file (default: the shipped default rig)")
    p.add_argument("--val-seed", type=int, default=100_000, help="data set seed of the held-out frame sets when rendering")
    p.add_argument("--frame-sets", type=int, default=16, help="frame sets to render (with --data synth)")
    p.add_argument(
        "--labels-at",
        default="input",
        choices=("input", "frame"),
        help="score at the network's input size (labels resized, nearest), or at the size a folder's labels were "
        "written at, the prediction scaled up to it: one reference for networks of different input sizes",
    )
    p.add_argument(
        "--body",
        default="background",
        choices=("background", "ignore"),
        help="the vehicle's own body in rendered labels: scored as the background it is labelled, or not scored "
        "(the BEV never sees it: the rig's masks keep it off the grid)",
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=run_eval)


def _register_export(commands: Any) -> None:
    p = commands.add_parser("export", help="write the network with its argmax head as ONNX", description=EXPORT_DOC)
    p.add_argument("--model", required=True, type=Path, help="model weights (.pt)")
    p.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    p.add_argument("--confidence", action="store_true", help="add the softmax-maximum output (confidence fusion)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True, help="compare ONNX Runtime with torch")
    p.set_defaults(func=run_export)


def _register_quantize(commands: Any) -> None:
    p = commands.add_parser("quantize", help="int8 ONNX graph for ONNX Runtime on CPU", description=QUANTIZE_DOC)
    p.add_argument("--model", required=True, type=Path, help="float ONNX graph from bev export")
    p.add_argument("--out", required=True, type=Path, help="int8 ONNX file to write")
    p.add_argument(
        "--format",
        default="qdq",
        choices=("qdq", "qoperator"),
        help="QuantizeLinear/DequantizeLinear pairs, or QLinear operators",
    )
    p.add_argument(
        "--float-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the classifier convolution and its argmax in float",
    )
    p.add_argument("--data", default="synth", help="'synth' (render frame sets) or a directory from bev synth")
    p.add_argument("--rig", default=str(DEFAULT_RIG), help="rig file (default: the shipped default rig)")
    p.add_argument("--frame-sets", type=int, default=8, help="calibration frame sets (all their cameras' images)")
    p.add_argument("--data-seed", type=int, default=0, help="data set seed of the calibration frame sets (the training set's)")
    p.add_argument("--check-frame-sets", type=int, default=4, help="held-out frame sets the labels are compared on (0: none)")
    p.add_argument("--val-seed", type=int, default=100_000, help="data set seed of those (rendered)")
    p.add_argument(
        "--min-agreement", type=float, default=0.99, help="fail when fewer labels than this agree with the float graph"
    )
    p.add_argument("--render-cache", default="", help="folder that keeps rendered data sets (as bev train's)")
    p.set_defaults(func=run_quantize)


def _register_infer(commands: Any) -> None:
    p = commands.add_parser("infer", help="frames of one frame set to the BEV grid of class ids", description=INFER_DOC)
    p.add_argument("--rig", help="rig file (default: the shipped default rig)")
    p.add_argument("--model", help="model file, .pt or .onnx (default: the shipped pruned model)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--confidence-fusion", action="store_true", help="per cell, the most confident covering camera")
    p.add_argument(
        "--input-pixels",
        type=int,
        help="pixels each camera runs through the network at, in its own aspect ratio (default: the model's training size)",
    )
    p.add_argument("--out", required=True, type=Path, help="BEV grid of class ids (single-channel PNG); timings go to OUT.json")
    p.add_argument("frames", nargs="+", metavar="CAM=IMAGE", help="one image per camera of the rig")
    p.set_defaults(func=run_infer)


def _sources(config: Any, input_size_hw: tuple[int, int]) -> tuple[Any, Any]:
    """Training and validation frame sources of a TrainConfig or PruneConfig."""
    from bev_service.training.synthdata import open_source

    def source(data: str, count: int, seed: int, rigs: str = "default") -> Any:
        cache = config.render_cache or None
        return open_source(
            data, config.rig, input_size_hw, count=count, seed=seed, progress=config.progress, cache_dir=cache, rigs=rigs
        )

    train_source = source(config.data, config.train_frame_sets, config.data_seed, config.rigs)
    return train_source, source(config.val_data, config.val_frame_sets, config.val_seed, config.val_rigs)


def run_train(args: argparse.Namespace) -> int:
    from bev_service.training.train import train

    config = config_from_args(TrainConfig, args, command="train")
    train(config, *_sources(config, config.input_size_hw))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from bev_service.geometry.projector import BevProjector
    from bev_service.runtime.segmenter import load_segmenter
    from bev_service.training.data import BodyLabelled
    from bev_service.training.evaluate import evaluate, format_table
    from bev_service.training.synthdata import open_source

    if args.real:
        return _run_real_eval(args)
    data = args.data or "synth"
    segmenter = load_segmenter(args.model, backend=args.backend)
    rig = load_rig(args.rig)
    size = segmenter.input_size_hw
    native = args.labels_at == "frame"
    source = open_source(data, args.rig, size, count=args.frame_sets, seed=args.val_seed, progress=True, native_size=native)
    if args.body == "ignore":
        try:
            source = BodyLabelled(source)
        except ValueError as exc:
            raise FrameError(f"--body ignore: {exc}") from exc
    report = evaluate(segmenter, source, projector=BevProjector(rig), progress=True).report()
    meta = {"data": data, "labels_at": args.labels_at, "body_scored_as": args.body}
    report = {"model": str(args.model), "backend": segmenter.backend, **meta, **report}
    print(format_table(report))
    _write_report(args.json, report)
    return 0


def _run_real_eval(args: argparse.Namespace) -> int:
    from bev_service.runtime.segmenter import load_segmenter
    from bev_service.training.real_eval import (
        default_real_data,
        evaluate_real,
        format_real_table,
        read_annotation,
        recording_folder,
    )

    root = args.real_data if args.real_data is not None else default_real_data()
    for path in args.real:  # a bad file or absent footage fails before the model loads
        recording_folder(read_annotation(path), root)
    segmenter = load_segmenter(args.model, backend=args.backend)
    report = evaluate_real(segmenter, args.real, root, progress=True).report()
    report = {"model": str(args.model), "backend": segmenter.backend, "data": "real", "real_data": str(root), **report}
    print(format_real_table(report), end="")
    _write_report(args.json, report)
    return 0


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    from bev_service.training.evaluate import to_json

    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(report), encoding="utf-8")


def run_prune(args: argparse.Namespace) -> int:
    from bev_service.runtime.weights import load_model
    from bev_service.training.prune import kept_layers, run_pruning

    config = config_from_args(PruneConfig, args, command="prune")
    loaded = load_model(config.model)
    kept_layers(loaded.model, config.keep)  # a misnamed layer fails before the frames are rendered
    report = run_pruning(config, *_sources(config, loaded.config.input_size_hw))
    summary = {k: report[k] for k in ("macs_ratio", "params_ratio", "cpu_speedup", "miou_drop") if k in report}
    print(json.dumps({"before": _brief(report["before"]), "after": _brief(report["after"]), **summary}))
    return 0


def _brief(measured: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": measured["params"],
        "gmacs": round(measured["macs"] / 1e9, 4),
        "cpu_ms": measured["cpu_latency"]["median_ms"],
        "miou": measured.get("miou"),
    }


def run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from bev_service.errors import ModelError
    from bev_service.runtime.weights import load_model
    from bev_service.training.export import check_onnx, export_onnx

    loaded = load_model(args.model)
    export_onnx(loaded.model, loaded.config, args.out, confidence=args.confidence)
    if args.check:
        images = np.random.default_rng(0).integers(0, 256, size=(2, *loaded.config.input_size_hw, 3), dtype=np.uint8)
        check = check_onnx(loaded.model, loaded.config, args.out, images)
        print(json.dumps({"onnx": str(args.out), **dataclasses.asdict(check), "agreement": check.agreement}))
        if check.mismatched_clear:
            raise ModelError(f"{args.out}: ONNX Runtime disagrees with torch on {check.mismatched_clear} clear-cut pixels")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    import numpy as np

    from bev_service.errors import ModelError
    from bev_service.runtime.onnx_backend import OnnxSegmenter
    from bev_service.training.quantize import check_quantized, quantize_onnx
    from bev_service.training.synthdata import open_source

    if args.frame_sets < 1 or args.check_frame_sets < 0:
        raise FrameError(
            f"--frame-sets must be at least 1 and --check-frame-sets not negative: {args.frame_sets}, {args.check_frame_sets}"
        )
    size = OnnxSegmenter(args.model, classes=None).input_size_hw
    cache = args.render_cache or None

    def images(count: int, seed: int) -> np.ndarray:
        source = open_source(args.data, args.rig, size, count=count, seed=seed, cache_dir=cache)
        return np.concatenate([source[i].images for i in range(min(count, len(source)))])  # (count * cameras, H, W, 3)

    where = f"{args.data} data set {args.data_seed}, frame sets 0-{args.frame_sets - 1}"
    quantize_onnx(
        args.model,
        args.out,
        images(args.frame_sets, args.data_seed),
        fmt=args.format,
        calibration_data=where,
        float_head=args.float_head,
    )
    if args.check_frame_sets:
        check = check_quantized(args.model, args.out, images(args.check_frame_sets, args.val_seed))
        print(json.dumps({"onnx": str(args.out), **dataclasses.asdict(check)}))
        if check.agreement < args.min_agreement:
            floor = f"--min-agreement {args.min_agreement}"
            raise ModelError(f"{args.out}: only {check.agreement:.4f} of the labels agree with the float graph ({floor})")
    return 0


def run_infer(args: argparse.Namespace) -> int:
    from bev_service.runtime.pipeline import BevPipeline
    from bev_service.runtime.segmenter import load_segmenter

    rig = load_rig(args.rig or DEFAULT_RIG)
    paths = parse_frame_args(args.frames, rig.camera_names)
    segmenter = load_segmenter(args.model or PRUNED_MODEL, backend=args.backend)
    pipeline = BevPipeline(rig, segmenter, confidence_fusion=args.confidence_fusion, encoder=None, input_pixels=args.input_pixels)
    try:
        result = pipeline.run({name: read_image(path) for name, path in paths.items()})
    finally:
        pipeline.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, result.grid)
    meta = {
        "rig_id": rig.rig_id,
        **rig.grid.metadata(),
        "content": "class ids",
        "model": str(args.model or PRUNED_MODEL),
        "backend": segmenter.backend,
        "trained_input_size_hw": list(segmenter.input_size_hw),
        "input_sizes_hw": {name: list(size) for name, size in zip(rig.camera_names, pipeline.input_sizes_hw, strict=True)},
        "timings_ms": result.timings_ms,
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s in %.1f ms", args.out, result.timings_ms["total"])
    return 0
