"""Parquet out: one row per frame set, the grid a ``fixed_shape_tensor`` column that plain pyarrow reads back.

Columns: ``drive`` (string), ``time_ns`` (the frame set's time, int64), ``capture_time_ns`` (struct: one int64 per
camera, in rig order), ``rig_id``, ``rig_fingerprint``, ``model_sha256`` (strings), ``timings_ms`` (struct: one
float64 per pipeline stage and ``total``), ``grid`` (``arrow.fixed_shape_tensor``, uint8, shape (rows, cols), the BEV
grid as ``bev_service.geometry.grid`` lays it out). The schema's metadata holds the grid's metadata and the class
table as JSON (keys ``bev.grid``, ``bev.classes``), the rig's fingerprint and the model's hash (``bev.rig_fingerprint``,
``bev.model_sha256``), and ``bev.<key>`` for each entry of the writer's ``metadata``. Read it back with::

    table = pyarrow.parquet.read_table(path)
    grids = table.column("grid").combine_chunks().to_numpy_ndarray()   # (frame sets, rows, cols) uint8
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.classes import class_table
from bev_service.geometry.rig import Rig

ROWS_PER_GROUP = 64


def schema(rig: Rig, stages: Sequence[str], model_sha256: str = "", metadata: Mapping[str, str] | None = None) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("drive", pa.string()),
            pa.field("time_ns", pa.int64()),
            pa.field("capture_time_ns", pa.struct([pa.field(c, pa.int64()) for c in rig.camera_names])),
            pa.field("rig_id", pa.string()),
            pa.field("rig_fingerprint", pa.string()),
            pa.field("model_sha256", pa.string()),
            pa.field("timings_ms", pa.struct([pa.field(s, pa.float64()) for s in stages])),
            pa.field("grid", pa.fixed_shape_tensor(pa.uint8(), list(rig.grid.shape))),
        ],
        metadata={
            "bev.grid": json.dumps(rig.grid.metadata()),
            "bev.classes": json.dumps(class_table()),
            "bev.rig_fingerprint": rig.fingerprint,
            "bev.model_sha256": model_sha256,
            **{f"bev.{k}": v for k, v in (metadata or {}).items()},
        },
    )


class BevParquetWriter:
    """Rows buffered and written a row group at a time, so a long drive never sits in memory whole."""

    def __init__(
        self,
        path: str | Path,
        rig: Rig,
        *,
        drive: str,
        model_sha256: str,
        stages: Sequence[str],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.rig, self.drive, self.model_sha256 = rig, drive, model_sha256
        self.stages = (*stages, "total")
        self.schema = schema(rig, self.stages, model_sha256, metadata)
        self._writer = pq.ParquetWriter(str(path), self.schema)
        self._rows: list[tuple[int, Mapping[str, int], Mapping[str, float], NDArray[np.uint8]]] = []

    def write(
        self, time_ns: int, capture_time_ns: Mapping[str, int], timings_ms: Mapping[str, float], bev: NDArray[np.uint8]
    ) -> None:
        if bev.shape != self.rig.grid.shape:
            raise ValueError(f"grid of shape {bev.shape}, the rig's is {self.rig.grid.shape}")
        self._rows.append((time_ns, dict(capture_time_ns), dict(timings_ms), bev))
        if len(self._rows) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._rows:
            return
        n = len(self._rows)
        grids = np.stack([r[3] for r in self._rows])  # (n, rows, cols)
        columns = [
            pa.array([self.drive] * n, pa.string()),
            pa.array([r[0] for r in self._rows], pa.int64()),
            pa.array(
                [{c: r[1][c] for c in self.rig.camera_names} for r in self._rows], self.schema.field("capture_time_ns").type
            ),
            pa.array([self.rig.rig_id] * n, pa.string()),
            pa.array([self.rig.fingerprint] * n, pa.string()),
            pa.array([self.model_sha256] * n, pa.string()),
            pa.array(
                [{s: float(r[2].get(s, float("nan"))) for s in self.stages} for r in self._rows],
                self.schema.field("timings_ms").type,
            ),
            pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(grids)),
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self._rows.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()
