"""BEV results as Parquet: plain pyarrow reads back the grids (a fixed_shape_tensor column), the capture time of each
camera, the rig's fingerprint, the model's hash and the stage timings; rows go out a row group at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bev_service.classes import class_table
from bev_service.geometry.rig import Rig
from bev_service.recordings import parquet_out
from bev_service.recordings.parquet_out import BevParquetWriter
from bev_service.runtime.pipeline import STAGES

FRAME_SETS = parquet_out.ROWS_PER_GROUP + 3  # two row groups


def test_grids_and_columns_read_back_with_plain_pyarrow(rig: Rig, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grids = rng.integers(0, 8, size=(FRAME_SETS, *rig.grid.shape), dtype=np.uint8)
    grids[:, 0, 0], grids[:, -1, -1] = 255, 254
    path = tmp_path / "drive.parquet"
    writer = BevParquetWriter(path, rig, drive="drive-7", model_sha256="f" * 64, stages=STAGES)
    for i, grid in enumerate(grids):
        stamps = {c: 10**18 + i * 10**8 + k for k, c in enumerate(rig.camera_names)}
        writer.write(10**18 + i * 10**8, stamps, {s: float(i) for s in (*STAGES, "total")}, grid)
    writer.close()

    table = pq.read_table(path)
    assert table.num_rows == FRAME_SETS and pq.ParquetFile(path).num_row_groups == 2
    column = table.column("grid").combine_chunks()
    assert isinstance(column.type, pa.FixedShapeTensorType) and column.type.shape == [400, 400]
    assert column.type.value_type == pa.uint8()
    read = column.to_numpy_ndarray()
    assert read.dtype == np.uint8 and read.shape == (FRAME_SETS, 400, 400)
    np.testing.assert_array_equal(read, grids)
    row = table.slice(5, 1).to_pylist()[0]
    assert row["drive"] == "drive-7" and row["time_ns"] == 10**18 + 5 * 10**8
    assert row["capture_time_ns"] == {"front": 10**18 + 5 * 10**8, "left": 10**18 + 5 * 10**8 + 1,
                                      "rear": 10**18 + 5 * 10**8 + 2, "right": 10**18 + 5 * 10**8 + 3}  # fmt: skip
    assert row["rig_id"] == rig.rig_id and row["rig_fingerprint"] == rig.fingerprint and row["model_sha256"] == "f" * 64
    assert row["timings_ms"] == {s: 5.0 for s in (*STAGES, "total")}
    metadata = table.schema.metadata
    assert json.loads(metadata[b"bev.grid"]) == rig.grid.metadata()
    assert json.loads(metadata[b"bev.classes"]) == class_table()
