"""What one running app holds: settings, metrics, and (once loaded) the model, the rigs and the engine.

Loading runs in a background thread started with the app, so ``/healthz`` answers at once and
``/readyz`` says 503 until the model is loaded, the default rig's tables are built and a warm-up frame
set has gone through the network. The stored rigs' tables are built after that, in the same thread
(or on first use, whichever comes first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bev_service.calib.rigfile import load_rig
from bev_service.classes import palette
from bev_service.errors import BevError, ModelError
from bev_service.geometry.rig import Rig
from bev_service.imageio import encode_label_png
from bev_service.runtime.int8 import file_sha256, int8_beside
from bev_service.runtime.pipeline import BevPipeline, BevResult, input_sizes
from bev_service.runtime.segmenter import Segmenter, cuda_available, load_segmenter
from bev_service.service.demo import DemoDrive
from bev_service.service.engine import Engine
from bev_service.service.metrics import Metrics, ReplicaMetrics
from bev_service.service.rigs import RigLimits, RigStore
from bev_service.service.settings import Settings

if TYPE_CHECKING:
    from bev_service.service.foxglove import FoxglovePublisher

log = logging.getLogger(__name__)

PALETTE = palette()


def encode_grid(grid: np.ndarray) -> bytes:
    """The grid as the API sends it: an 8-bit palette PNG whose values are the class ids."""
    return encode_label_png(grid, PALETTE)


def encode_camera_labels(rig: Rig, result: BevResult) -> dict[str, bytes]:
    """Each camera's label map the grid was warped from, as the grid is sent: a palette PNG of class ids
    (at the camera's network input size). Milliseconds per camera: call it off the event loop."""
    return {name: encode_grid(labels) for name, labels in zip(rig.camera_names, result.camera_labels_numpy(), strict=True)}


def resolve_model(settings: Settings) -> tuple[Path, str]:
    """The model file and backend that ``settings.backend`` and ``settings.int8`` mean on this machine (see ``Settings``)."""
    model, backend = Path(settings.model), settings.backend
    if not model.is_file():
        raise ModelError(f"model file {model} does not exist (train one with `make train`, or set BEV_MODEL)")
    onnx = model if model.suffix.lower() == ".onnx" else model.with_suffix(".onnx")
    if backend == "auto":
        on_cuda = cuda_available() and (settings.device or "cuda").startswith("cuda")
        backend = "onnx" if model.suffix.lower() == ".onnx" or (not on_cuda and onnx.is_file()) else "torch"
    if backend == "onnx":
        if not onnx.is_file():
            raise ModelError(f"the onnx backend needs {onnx} (write it with `bev export --model {model}`)")
        int8 = int8_beside(onnx) if model.suffix.lower() != ".onnx" and settings.int8 else None  # a named .onnx as named
        model = int8 or onnx
    return model, backend


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.replicas: ReplicaMetrics | None = None  # the fleet's other replicas (set by ray_serve), for /metrics/fleet
        self.ready = threading.Event()
        self.error: str | None = None
        self.segmenter: Segmenter | None = None
        self.store: RigStore | None = None
        self.engine: Engine | None = None
        self.model_info: dict[str, Any] = {}
        self.started_at = time.time()
        self._demo: DemoDrive | None = None
        self.foxglove: FoxglovePublisher | None = None
        self._closing = threading.Event()
        self._loader = threading.Thread(target=self._load, name="bev-load", daemon=True)

    def render_metrics(self) -> bytes:
        """This app's metrics, the queue depth as of now."""
        if self.engine is not None:
            self.metrics.queue_depth.set(self.engine.depth())
        return self.metrics.render()

    def start(self) -> None:
        self.start_foxglove()
        self._loader.start()

    def start_foxglove(self) -> None:
        """Bind the Foxglove server when ``foxglove_port`` is set (``FoxgloveStartError`` when it cannot); once.
        ``bev serve`` calls it before the HTTP port opens, so that a taken port fails the command at once."""
        if self.settings.foxglove_port is None or self.foxglove is not None:
            return
        from bev_service.service.foxglove import FoxglovePublisher  # the SDK loads only when asked for

        publisher = FoxglovePublisher(
            host=self.settings.foxglove_host,
            port=self.settings.foxglove_port,
            metrics=self.metrics,
            queue_size=self.settings.foxglove_queue_size,
        )
        publisher.start()
        self.foxglove = publisher

    def publish(self, rig: Rig, images: Mapping[str, bytes] | None, result: BevResult, stamp_s: float | None = None) -> None:
        """Offer an answered frame set to the Foxglove live view, if one runs; never waits."""
        if self.foxglove is not None:
            self.foxglove.offer(rig, images, result.grid, stamp_s)

    def default_camera_names(self) -> tuple[str, ...]:
        """The cameras a frame set for the default rig has: the served rig once loaded (a stored rig may
        have replaced the configured file), the configured file before that, none if it is unreadable."""
        if self.store is not None:
            return tuple(self.store.get(None).rig.camera_names)
        try:
            return tuple(load_rig(Path(self.settings.rig)).camera_names)
        except (BevError, OSError) as exc:
            log.debug("no camera names for the OpenAPI form: %s", exc)
            return ()

    def demo_drive(self) -> DemoDrive:
        """The viewer's synthetic drive of the default rig, made on first use: most services never show it."""
        if self._demo is None:
            assert self.store is not None
            self._demo = DemoDrive(self.store.get(None).rig, self.settings.demo_frames, scale=self.settings.demo_scale)
        return self._demo

    def make_pipeline(self, rig: Rig) -> BevPipeline:
        assert self.segmenter is not None
        return BevPipeline(
            rig,
            self.segmenter,
            confidence_fusion=self.settings.confidence_fusion,
            encoder=encode_grid,
            max_pixels=self.settings.max_image_pixels,
            input_pixels=self.settings.input_pixels,
        )

    def input_sizes(self, rig: Rig) -> tuple[tuple[int, int], ...]:
        """Each camera's network input (h, w) on ``rig``, known without building its tables."""
        assert self.segmenter is not None
        return input_sizes(rig, self.segmenter, self.settings.input_pixels)

    def _load(self) -> None:
        began = time.perf_counter()
        try:
            path, backend = resolve_model(self.settings)
            self.segmenter = load_segmenter(path, backend=backend, device=self.settings.device)
            self.model_info = {
                "path": str(path),
                "file": path.name,
                "sha256": file_sha256(path),
                "backend": self.segmenter.backend,
                "quantization": getattr(self.segmenter, "quantization", None),  # how an int8 graph was made; None: float
                "input_size_hw": list(self.segmenter.input_size_hw),
                "input_pixels": self.settings.input_pixels or self.segmenter.input_size_hw[0] * self.segmenter.input_size_hw[1],
                "config": self.segmenter.config.to_dict(),
            }
            settings = self.settings
            limits = RigLimits(
                settings.max_rigs,
                settings.max_cameras,
                settings.max_rig_cells,
                settings.max_total_cells,
                settings.max_mask_pixels,
            )
            self.store = RigStore(
                self.make_pipeline,
                Path(settings.rigs_dir),
                Path(settings.rig),
                limits=limits,
                default_id=settings.default_rig_id,
                input_sizes=self.input_sizes,
                shared=settings.shared_rigs_dir,
            )
            self.engine = Engine(queue_size=settings.queue_size, max_batch=settings.max_batch, metrics=self.metrics)
            if settings.warmup:
                entry = self.store.get(None)
                blank = {c.name: np.zeros((*c.image_size_hw, 3), np.uint8) for c in entry.rig.cameras}
                entry.pipeline.run(blank)
            if self.foxglove is not None:
                self.foxglove.announce(self.store.get(None).rig)
            self.ready.set()
            log.info("ready in %.1f s: model %s on %s, rigs %s", time.perf_counter() - began, path, backend, self.store.ids())
        except (BevError, OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("not ready: %s", exc)
            return
        self.store.build_all(stop=self._closing)

    def close(self) -> None:
        self._closing.set()
        self._loader.join(timeout=60)
        if self.engine is not None:
            self.engine.close()
        if self.store is not None:
            self.store.close()
        if self.foxglove is not None:
            self.foxglove.close()
