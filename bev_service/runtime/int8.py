"""Which int8 graph to serve: the one ``bev quantize`` left beside a float graph, while it is current."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from bev_service.runtime.segmenter import QUANT_KEY

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def quantized_from(int8_path: str | Path, float_path: str | Path) -> bool:
    """Whether ``int8_path`` is an int8 graph that ``quantize_onnx`` wrote from the float graph now at ``float_path``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        meta = {p.key: p.value for p in onnx.load(str(int8_path), load_external_data=False).metadata_props}
        record = json.loads(meta.get(QUANT_KEY, "null"))
    except (OSError, ValueError, DecodeError) as exc:
        log.warning("%s: unreadable (%s)", int8_path, exc)
        return False
    return isinstance(record, dict) and record.get("source_sha256") == file_sha256(float_path)


def int8_beside(float_path: str | Path) -> Path | None:
    """The int8 graph ``bev quantize`` leaves beside a float graph (``<stem>-int8.onnx``, as ``make train`` names
    it) when it is there and was quantized from that float graph as it is now; else None (a stale one is logged)."""
    float_path = Path(float_path)
    int8 = float_path.with_name(f"{float_path.stem}-int8.onnx")
    if not int8.is_file():
        return None
    if quantized_from(int8, float_path):
        return int8
    log.warning("%s was not quantized from %s as it is now (run bev quantize); using the float graph", int8, float_path)
    return None
