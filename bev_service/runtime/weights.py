"""Model files: a ``torch.save`` of plain tensors plus a JSON config, loaded with ``weights_only=True``.

A file is a dict ``{"format", "version", "config": JSON text, "info": JSON text, "state_dict": {name: tensor}}``.
The config holds everything ``enet(...)`` needs to rebuild the architecture, pruned channel counts
included, so loading never unpickles code. Every way a file can be unusable (missing, truncated,
not ours, other classes, tensors that do not fit) raises ``ModelError`` at load, naming the file.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bev_service.classes import CLASS_NAMES
from bev_service.errors import ModelError
from bev_service.runtime.enet import ENet
from bev_service.runtime.model_config import ModelConfig, check_classes

log = logging.getLogger(__name__)

FORMAT = "bev-service/enet"
VERSION = 1


@dataclass(frozen=True)
class LoadedModel:
    model: ENet
    config: ModelConfig
    info: dict[str, Any] = field(default_factory=dict)  # provenance and metrics, free-form JSON


def save_model(path: str | Path, model: ENet, config: ModelConfig, info: dict[str, Any] | None = None) -> None:
    """Write atomically: a reader never sees a half-written file."""
    config = config.with_channels(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict()),
        "info": json.dumps(info or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(target)


def read_payload(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with every failure turned into a ModelError naming the file."""
    source = Path(path)
    if not source.is_file():
        raise ModelError(f"model file {source} does not exist" if not source.exists() else f"{source} is not a file")
    if not zipfile.is_zipfile(source):
        # torch.save writes a zip archive whose directory sits at the end: a cut file has none.
        raise ModelError(f"{source}: cannot read, truncated or not a torch.save file (no complete zip archive)")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and plain containers; the message names the culprit.
        raise ModelError(f"{source}: refused, holds more than tensors and plain values ({_first_line(exc)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"{source}: cannot read, truncated or not a torch.save file ({_first_line(exc)})") from exc
    if not isinstance(payload, dict):
        raise ModelError(f"{source}: not a bev-service model file (top level is {type(payload).__name__}, expected a dict)")
    return payload


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_config(source: Path, payload: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    if payload.get("format") != FORMAT:
        raise ModelError(f"{source}: not a bev-service model file (format {payload.get('format')!r}, expected {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ModelError(f"{source}: model file version {payload.get('version')!r}, this code reads version {VERSION}")
    try:
        config = ModelConfig.from_dict(json.loads(payload["config"]))
        info = json.loads(payload.get("info") or "{}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: bad model config: {exc}") from exc
    return config, info


def load_model(path: str | Path, *, classes: tuple[str, ...] | None = CLASS_NAMES) -> LoadedModel:
    """Rebuild the network of a model file on the CPU in eval mode.

    ``classes`` is the class table the caller expects (the project's by default); None accepts any.
    """
    source = Path(path)
    payload = read_payload(source)
    config, info = _parse_config(source, payload)
    if classes is not None:
        check_classes(source, config, classes)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{source}: 'state_dict' must map names to tensors")
    try:
        model = config.build()
    except ValueError as exc:
        raise ModelError(f"{source}: cannot build the network of its config: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: tensors do not fit the network of its config: {exc}") from exc
    log.debug("loaded %s (%s, %d classes)", source, config.arch, config.num_classes)
    return LoadedModel(model=model.eval(), config=config, info=info)
