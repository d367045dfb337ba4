"""``bev replay --engine ray`` on a real Ray cluster of two nodes on this machine (one CPU each): the grids of the local
engine byte for byte (Parquet, PNG), shards spread over both actors, a failing shard reported with its recording and
window while the rest completes, and re-runs that skip what is written (either engine's)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.cli.main import main
from bev_service.recordings import ros
from bev_service.recordings.mcap_out import image_topic
from bev_service.recordings.ray_engine import PipelineSpec, RayOptions, RayRun, replay_recordings_on_ray
from bev_service.recordings.replay import RecordingSummary, ReplayOptions
from bev_service.runtime.int8 import file_sha256
from bev_service.runtime.ray_env import ray_environment
from bev_service.shipped import DEFAULT_RIG
from tests.networks import one_torch_thread
from tests.recordings.conftest import CAMERAS, EPOCH_NS, Drive

__all__ = ["one_torch_thread"]

ray = pytest.importorskip("ray", reason="ray is not importable: install bev-service's dependencies (ray[data])")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::ResourceWarning")

LONG_FRAMES = 8  # frame sets of the long drive, 2 s apart: four shards of 4 s (two frame sets each)
SHARD_SECONDS = "4"
OBJECT_STORE_BYTES = 100 * 1024**2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Ray nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    ray_environment()  # as the engine runs Ray: no usage-statistics threads left behind in this process

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def connected(cluster: Any) -> Any:
    """The cluster, this process connected to it as its driver: runs given ``--address`` use the connection."""
    if not ray.is_initialized():
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster


def write_small_chunks(path: Path, drive: Drive, stamps_ns: list[int]) -> Path:
    """The drive's frame sets cycled at ``stamps_ns``, uncompressed, each image its own chunk (damage to one chunk
    harms the shards that read it only)."""
    from mcap.writer import CompressionType, Writer

    with path.open("wb") as f:
        writer = Writer(f, chunk_size=1, compression=CompressionType.NONE)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema(ros.COMPRESSED_IMAGE, ros.ROS2_SCHEMA_ENCODING, ros.msgdef(ros.COMPRESSED_IMAGE))
        channels = {c: writer.register_channel(image_topic(c), ros.CDR_ENCODING, schema) for c in CAMERAS}
        for index, stamp in enumerate(stamps_ns):
            for camera in CAMERAS:
                jpeg = drive.jpegs[index % len(drive.jpegs)][camera]
                data = ros.serialize(ros.compressed_image(stamp, f"{camera}_optical_frame", jpeg, "jpeg"))
                writer.add_message(channels[camera], log_time=stamp + 1_000_000, data=data, publish_time=stamp + 1_000_000)
        writer.finish()
    return path


@pytest.fixture(scope="module")
def long_drive(drive: Drive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drive's frame sets cycled into 14 s of recording."""
    stamps = [EPOCH_NS + k * 2_000_000_000 for k in range(LONG_FRAMES)]
    return write_small_chunks(tmp_path_factory.mktemp("long") / "long.mcap", drive, stamps)


@pytest.fixture(scope="module")
def damaged(drive: Drive, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """Four frame sets 5 s apart, the third's front image damaged: with shards of 4 s each shard reads the images of
    its own frame set only (1 s either side), so the third shard fails and the others do not."""
    stamps = [EPOCH_NS + k * 5_000_000_000 for k in range(4)]
    path = write_small_chunks(tmp_path_factory.mktemp("damaged") / "damaged.mcap", drive, stamps)
    data = bytearray(path.read_bytes())
    at = data.index(drive.jpegs[2]["front"])
    data[at + 200 : at + 300] = bytes(100)
    path.write_bytes(bytes(data))
    return path, stamps


@pytest.fixture(scope="module")
def truncated(drive: Drive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("truncated") / "truncated.mcap"
    path.write_bytes(drive.mcap.read_bytes()[:5000])
    return path


def replay(recordings: list[Path], out: Path, weights: Path, *extra: str) -> int:
    args = ["replay", *map(str, recordings), "--out", str(out), "--model", str(weights), "--no-progress", *extra]
    return main(args)


def on_ray(cluster: Any) -> tuple[str, ...]:
    return ("--engine", "ray", "--address", cluster.address, "--workers", "2", "--shard-seconds", SHARD_SECONDS)


def replay_on_ray(
    cluster: Any, recordings: list[Path], out: Path, weights: Path, fmt: str, run: RayRun
) -> list[RecordingSummary]:
    options = ReplayOptions(fmt=fmt, model_sha256=file_sha256(weights))  # type: ignore[arg-type]
    spec = PipelineSpec(model=weights, rig=load_rig(DEFAULT_RIG))
    ray_options = RayOptions(address=cluster.address, workers=2, shard_seconds=float(SHARD_SECONDS))
    return replay_recordings_on_ray(recordings, out, spec, options, ray_options, run=run)


def test_parquet_grids_equal_the_local_engines_shards_spread_and_a_failing_shard_is_reported(
    cluster: Any,
    drive: Drive,
    long_drive: Path,
    damaged: tuple[Path, list[int]],
    truncated: Path,
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    local, on_cluster = tmp_path / "local", tmp_path / "ray"
    assert replay([long_drive, drive.mcap], local, tiny_weights, "--format", "parquet") == 0
    ray.shutdown()  # not connected: the run joins the cluster at its address, and leaves it after
    run = RayRun()
    summaries = replay_on_ray(cluster, [long_drive, drive.mcap, damaged[0], truncated], on_cluster, tiny_weights, "parquet", run)
    assert [(s.error, s.written, s.skipped) for s in summaries[:2]] == [(None, LONG_FRAMES, []), (None, 3, [])]
    assert run.shards == 4 + 1 + 4 and len(run.pipeline_load_s) == 2 and run.runtime_start_s > 0
    assert not ray.is_initialized()  # disconnected after the run; the cluster stays
    assert len(run.workers_used) == 2 and len({w.split(":")[0] for w in run.workers_used}) == 2  # one actor per node
    for name in ("long.parquet", "drive.parquet"):
        ours, theirs = pq.read_table(on_cluster / name), pq.read_table(local / name)
        grids = [t.column("grid").combine_chunks().to_numpy_ndarray() for t in (ours, theirs)]
        assert grids[0].shape == grids[1].shape and grids[0].tobytes() == grids[1].tobytes()
        for column in ("time_ns", "capture_time_ns", "drive", "model_sha256", "rig_fingerprint"):
            assert ours.column(column).to_pylist() == theirs.column(column).to_pylist()
        assert ours.schema.metadata == theirs.schema.metadata
    # The damaged recording: its third shard named with its window and cause, its Parquet never left as if complete.
    assert summaries[2].error is not None
    assert summaries[2].error.startswith(f"shard 3 of 4 (window 7.500 s to 11.250 s) failed: {damaged[0].resolve()}: ")
    assert "crc" in summaries[2].error.lower() and "shard 1 " not in summaries[2].error
    assert summaries[3].error is not None and "truncated MCAP" in summaries[3].error
    assert sorted(p.name for p in on_cluster.iterdir()) == ["drive.parquet", "long.parquet"]


def test_pngs_equal_the_local_engines_the_shards_that_did_not_fail_are_written_and_reruns_skip_what_is_written(
    connected: Any,
    long_drive: Path,
    damaged: tuple[Path, list[int]],
    tiny_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local, on_cluster = tmp_path / "local", tmp_path / "ray"
    assert replay([long_drive], local, tiny_weights, "--format", "png") == 0
    capsys.readouterr()
    assert replay([long_drive, damaged[0]], on_cluster, tiny_weights, "--format", "png", *on_ray(connected)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{long_drive}: {LONG_FRAMES} frame sets written (png), 0 skipped"
    assert lines[1].startswith(f"{damaged[0]}: FAILED: shard 3 of 4 (window 7.500 s to 11.250 s) failed: ")
    assert lines[2] == "2 recordings: 11 frame sets written, 0 skipped, 1 failed"
    pngs = sorted((on_cluster / "long").glob("*.png"))
    assert len(pngs) == LONG_FRAMES
    assert [p.read_bytes() for p in pngs] == [(local / "long" / p.name).read_bytes() for p in pngs]
    stamps = damaged[1]
    assert sorted(p.name for p in (on_cluster / "damaged").glob("*.png")) == [f"{stamps[k]:019d}.png" for k in (0, 1, 3)]

    # A re-run: the PNGs written are passed to the actors as done; only the one missing is computed and written.
    pngs[3].unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (on_cluster / "long").iterdir()}
    assert replay([long_drive], on_cluster, tiny_weights, "--format", "png", *on_ray(connected)) == 0
    assert f"1 frame sets written (png), {LONG_FRAMES - 1} already written, 0 skipped" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in (on_cluster / "long").iterdir()}
    assert [name for name in after if after[name] != before.get(name)] == [pngs[3].name]
    assert pngs[3].read_bytes() == (local / "long" / pngs[3].name).read_bytes()


def test_a_time_window_is_sharded_within_its_bounds_into_the_local_engines_grids(
    connected: Any, long_drive: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    local, on_cluster = tmp_path / "local", tmp_path / "ray"
    assert replay([long_drive], local, tiny_weights, "--format", "parquet", "--start", "3", "--end", "11") == 0
    options = ReplayOptions(fmt="parquet", model_sha256=file_sha256(tiny_weights), window=(3.0, 11.0))
    spec = PipelineSpec(model=tiny_weights, rig=load_rig(DEFAULT_RIG))
    ray_options = RayOptions(address=connected.address, workers=2, shard_seconds=float(SHARD_SECONDS))
    run = RayRun()
    [summary] = replay_recordings_on_ray([long_drive], on_cluster, spec, options, ray_options, run=run)
    assert summary.error is None and summary.written == 4 and run.shards == 2  # 4 s to 10 s, in two shards of 4 s
    ours, theirs = pq.read_table(on_cluster / "long.parquet"), pq.read_table(local / "long.parquet")
    assert (
        ours.column("time_ns").to_pylist()
        == theirs.column("time_ns").to_pylist()
        == [EPOCH_NS + k * 2_000_000_000 for k in (2, 3, 4, 5)]
    )
    assert ours.column("grid").combine_chunks().to_numpy_ndarray().tobytes() == (
        theirs.column("grid").combine_chunks().to_numpy_ndarray().tobytes()
    )
    assert ours.schema.metadata == theirs.schema.metadata and ours.schema.metadata[b"bev.window"] == b"3 s to 11 s"


def test_a_complete_output_of_either_engine_is_not_sharded(
    cluster: Any, long_drive: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    for fmt in ("mcap", "parquet"):
        assert replay([long_drive], tmp_path, tiny_weights, "--format", fmt) == 0
        run = RayRun()
        [summary] = replay_on_ray(cluster, [long_drive], tmp_path, tiny_weights, fmt, run)
        assert summary.error is None and summary.already_written == -1
        assert run.shards == 0 and run.workers_used == set() and run.runtime_start_s == 0  # Ray not even joined


def test_ray_options_only_apply_with_the_ray_engine(drive: Drive, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["replay", str(drive.mcap), "--out", str(tmp_path)]
    cases = [
        ([*base, "--workers", "2"], "--workers only apply with --engine ray"),
        ([*base, "--engine", "ray", "--workers", "0"], "--workers must be at least 1"),
        ([*base, "--engine", "ray", "--shard-seconds", "0"], "--shard-seconds must be positive"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_local_engine_and_the_service_never_import_ray() -> None:
    script = (
        "import sys\n"
        "import bev_service.cli.main, bev_service.cli.replay, bev_service.recordings.ray_engine, bev_service.service.app\n"
        "bev_service.cli.main.build_parser()\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
