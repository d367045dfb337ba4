"""``bev replay`` end to end on a tiny drive with a tiny network: MCAP, Parquet and PNG outputs that agree, re-runs
that skip what is written, a summary of skipped frame sets with their reasons, and malformed recordings reported by
name while the others complete. ``bev synth --mcap`` refuses options that do not fit."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.cli.main import main
from bev_service.geometry.grid import cells_as_picture
from bev_service.geometry.rig import Rig
from bev_service.imageio import read_labels
from bev_service.recordings import gridmsg
from bev_service.runtime.int8 import file_sha256
from bev_service.runtime.weights import save_model
from bev_service.shipped import DEFAULT_RIG
from tests.networks import TINY, one_torch_thread, tiny_model
from tests.recordings.conftest import CAMERAS, FRAMES, Drive, drive_images, write_mcap, write_rosbag2

__all__ = ["one_torch_thread"]


def replay(recordings: list[Path], out: Path, weights: Path, *extra: str) -> int:
    args = ["replay", *map(str, recordings), "--out", str(out), "--model", str(weights), "--no-progress", *extra]
    return main(args)


def mcap_grids(path: Path) -> list[np.ndarray]:
    """The class ids of a BEV MCAP's foxglove.Grid messages, back in the BEV layout; its OccupancyGrids agree."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with path.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        grids = [json.loads(m.data) for _, _, m in reader.iter_messages(topics=["/bev/grid"])]
        occupancy = [m for _, _, _, m in reader.iter_decoded_messages(topics=["/bev/occupancy"])]
    bevs = []
    for grid, occ in zip(grids, occupancy, strict=True):
        cells = np.frombuffer(base64.b64decode(grid["data"]), dtype=np.uint8).reshape(-1, grid["column_count"], 5)
        bev = cells_as_picture(cells[..., 0])
        values = np.asarray(occ.data, dtype=np.int8).reshape(occ.info.height, occ.info.width)
        np.testing.assert_array_equal(cells_as_picture(values), gridmsg.occupancy_from_bev(bev))
        bevs.append(bev)
    return bevs


@pytest.fixture(scope="module")
def outputs(drive: Drive, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay")
    for fmt in ("mcap", "parquet", "png"):
        assert replay([drive.mcap], out, tiny_weights, "--format", fmt) == 0
    return out


def test_the_three_formats_hold_the_same_grids(outputs: Path, drive: Drive, tiny_weights: Path) -> None:
    stamps = [drive.stamp_ns(i) for i in range(FRAMES)]
    from_mcap = mcap_grids(outputs / "drive.mcap")
    table = pq.read_table(outputs / "drive.parquet")
    from_parquet = table.column("grid").combine_chunks().to_numpy_ndarray()
    pngs = sorted((outputs / "drive").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:019d}.png" for t in stamps]
    assert len(from_mcap) == len(from_parquet) == FRAMES
    for grid_mcap, grid_parquet, png in zip(from_mcap, from_parquet, pngs, strict=True):
        np.testing.assert_array_equal(grid_mcap, grid_parquet)
        np.testing.assert_array_equal(read_labels(png), grid_parquet)
    assert table.column("time_ns").to_pylist() == stamps
    assert set(table.column("model_sha256").to_pylist()) == {file_sha256(tiny_weights)}
    assert table.column("drive").to_pylist() == ["drive"] * FRAMES
    assert not list(outputs.glob("*.partial")) and not list((outputs / "drive").glob("*.partial"))


def test_a_rerun_skips_what_is_written(
    outputs: Path, drive: Drive, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in outputs.rglob("*") if p.is_file()}
    capsys.readouterr()
    for fmt in ("mcap", "parquet"):
        assert replay([drive.mcap], outputs, tiny_weights, "--format", fmt) == 0
        assert "already written" in capsys.readouterr().out
    (outputs / "drive" / f"{drive.stamp_ns(1):019d}.png").unlink()
    assert replay([drive.mcap], outputs, tiny_weights, "--format", "png") == 0
    assert "1 frame sets written (png), 2 already written, 0 skipped" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in outputs.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert [p.name for p in after if after[p] != before[p]] == [f"{drive.stamp_ns(1):019d}.png"]


def test_outputs_of_another_model_are_neither_skipped_nor_added_to(
    outputs: Path, drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pt"
    save_model(other, tiny_model(seed=1), TINY, {"note": "another untrained network"})
    capsys.readouterr()
    for fmt, name in (("mcap", "drive.mcap"), ("parquet", "drive.parquet"), ("png", "drive")):
        assert replay([drive.mcap], outputs, other, "--format", fmt) == 1
        out = capsys.readouterr().out
        assert f"FAILED: {outputs / name} exists from another run: model_sha256 {file_sha256(tiny_weights)}" in out
    provenance = json.loads((outputs / "drive" / "provenance.json").read_text())
    stat = drive.mcap.stat()
    assert provenance == {
        "model_sha256": file_sha256(tiny_weights),
        "rig_fingerprint": load_rig(DEFAULT_RIG).fingerprint,
        "source": str(drive.mcap.resolve()),
        "source_size": str(stat.st_size),
        "source_mtime_ns": str(stat.st_mtime_ns),
        "tolerance_ms": "20.0",
        "topics": json.dumps({c: f"/cam/{c}/compressed" for c in CAMERAS}),
        "window": "all",
    }


def test_outputs_of_other_settings_or_another_recording_of_the_name_are_reported(
    outputs: Path, drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write_mcap(tmp_path / "drive.mcap", drive_images(drive, {(1, "rear"): 5.0}))
    swapped = "--topics=front=/cam/rear/compressed,rear=/cam/front/compressed"
    capsys.readouterr()
    for recording, fmt, extra, differs in (
        (drive.mcap, "mcap", ["--tolerance-ms", "30"], "tolerance_ms 20.0 (now 30.0)"),
        (drive.mcap, "parquet", [swapped], 'topics {"front": "/cam/front/compressed", '),
        (other, "png", [], f"source {drive.mcap.resolve()} (now {other.resolve()})"),
    ):
        assert replay([recording], outputs, tiny_weights, "--format", fmt, *extra) == 1
        out = capsys.readouterr().out
        assert "exists from another run: " in out and differs in out, out
    assert len(mcap_grids(outputs / "drive.mcap")) == FRAMES


def test_a_time_window_replays_its_part_and_its_output_is_not_taken_for_another(
    outputs: Path, drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    window = ["--start", "0.05", "--end", "0.15"]  # frame set 1 of the 10-per-second drive
    capsys.readouterr()
    assert replay([drive.mcap], tmp_path, tiny_weights, "--format", "parquet", *window) == 0
    assert f"{drive.mcap}: 1 frame sets written (parquet, 0.05 s to 0.15 s), 0 skipped" in capsys.readouterr().out
    part, whole = pq.read_table(tmp_path / "drive.parquet"), pq.read_table(outputs / "drive.parquet")
    assert part.column("time_ns").to_pylist() == [drive.stamp_ns(1)]
    grids = [t.column("grid").combine_chunks().to_numpy_ndarray() for t in (part, whole)]
    np.testing.assert_array_equal(grids[0][0], grids[1][1])
    assert pq.read_schema(tmp_path / "drive.parquet").metadata[b"bev.window"] == b"0.05 s to 0.15 s"
    assert replay([drive.mcap], tmp_path, tiny_weights, "--format", "parquet", *window) == 0  # done: skipped
    assert "already written" in capsys.readouterr().out
    for other, now in (([], "all"), (["--start", "0.1"], "0.1 s to end")):
        assert replay([drive.mcap], tmp_path, tiny_weights, "--format", "parquet", *other) == 1
        assert f"exists from another run: window 0.05 s to 0.15 s (now {now})" in capsys.readouterr().out
    assert replay([drive.mcap], tmp_path / "late", tiny_weights, "--start", "5") == 1
    assert "FAILED: " in (out := capsys.readouterr().out) and "--start 5 s is past the recording's end" in out, out
    assert not (tmp_path / "late" / "drive.mcap").exists()


def test_a_recording_with_every_frame_set_skipped_still_completes(
    drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lonely = write_mcap(tmp_path / "lonely.mcap", drive_images(drive, {(i, "rear"): 45.0 for i in range(FRAMES)}))
    out = tmp_path / "out"
    assert replay([lonely], out, tiny_weights, "--format", "parquet") == 0
    assert "0 frame sets written (parquet), 3 skipped" in capsys.readouterr().out
    table = pq.read_table(out / "lonely.parquet")
    assert table.num_rows == 0 and table.schema.field("grid").type.shape == [400, 400]
    assert replay([lonely], out, tiny_weights, "--format", "parquet") == 0
    assert "already written" in capsys.readouterr().out


def test_the_summary_names_skipped_frame_sets_and_their_reasons(
    drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jitter = write_mcap(tmp_path / "jitter.mcap", drive_images(drive, {(1, "rear"): 45.0}))
    bag = write_rosbag2(tmp_path / "bag", drive_images(drive, {(2, "left"): None}), storage="sqlite3")
    assert replay([jitter, bag], tmp_path / "out", tiny_weights, "--format", "parquet") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{jitter}: 2 frame sets written (parquet), 1 skipped",
        "  skipped 1700000000.100 s: out of tolerance rear (+45.0 ms)",
        f"{bag}: 2 frame sets written (parquet), 1 skipped",
        "  skipped 1700000000.200 s: missing left",
        "2 recordings: 4 frame sets written, 2 skipped, 0 failed",
    ]
    assert pq.read_table(tmp_path / "out" / "bag.parquet").num_rows == 2
    # A wider tolerance takes the jittered frame set in.
    assert replay([jitter], tmp_path / "wide", tiny_weights, "--format", "parquet", "--tolerance-ms", "50") == 0
    assert "3 frame sets written (parquet), 0 skipped" in capsys.readouterr().out


def test_malformed_recordings_are_named_and_the_others_complete(
    drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated, text = tmp_path / "truncated.mcap", tmp_path / "notes.mcap"
    truncated.write_bytes(drive.mcap.read_bytes()[:5000])
    text.write_text("not a recording\n")
    three = write_mcap(tmp_path / "three.mcap", [i for i in drive_images(drive) if i[0] != "rear"])
    out = tmp_path / "out"
    assert replay([truncated, text, drive.mcap, three], out, tiny_weights, "--format", "mcap") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{truncated}: FAILED: {truncated}: truncated MCAP")
    assert lines[1].startswith(f"{text}: FAILED: {text}: not an MCAP file")
    assert lines[2] == f"{drive.mcap}: 3 frame sets written (mcap), 0 skipped"
    assert lines[3].startswith(f"{three}: FAILED: {three}: no single image topic for camera 'rear'")
    assert lines[4:] == ["4 recordings: 3 frame sets written, 0 skipped, 3 failed"]
    assert sorted(p.name for p in out.iterdir()) == ["drive.mcap"]
    assert len(mcap_grids(out / "drive.mcap")) == FRAMES


def test_bad_options_exit_2_with_a_message(drive: Drive, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["replay", str(drive.mcap), "--out", str(tmp_path), "--topics", "front"], "expected CAMERA=TOPIC"),
        (["replay", str(drive.mcap), "--out", str(tmp_path), "--tolerance-ms", "-1"], "--tolerance-ms must be"),
        (["replay", str(drive.mcap), "--out", str(tmp_path), "--batch", "0"], "--batch must be between 1 and 64"),
        (["replay", str(drive.mcap), "--out", str(tmp_path), "--start", "-1"], "--start must be 0 s or later"),
        (["replay", str(drive.mcap), "--out", str(tmp_path), "--start", "2", "--end", "1"], "--end must come after"),
        (["synth", "--mcap", str(tmp_path / "x.mcap"), "--count", "1"], "--mcap and --mcap-encoding only apply with --drive"),
        (["synth", "--drive", "--frames", "1", "--mcap", str(tmp_path / "x.bag")], "--mcap must name a .mcap file"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.mcap").exists()


def test_synth_mcap_records_its_provenance(drive: Drive) -> None:
    from mcap.reader import make_reader

    with drive.mcap.open("rb") as f:
        reader = make_reader(f)
        header = reader.get_header()
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
        topics = sorted(c.topic for c in reader.get_summary().channels.values())  # type: ignore[union-attr]
    assert header.profile == "ros2" and topics == sorted(f"/cam/{c}/compressed" for c in CAMERAS)
    rig = load_rig(DEFAULT_RIG)
    assert metadata == {
        "bev.synth": {
            "rig_id": rig.rig_id,
            "rig_fingerprint": rig.fingerprint,
            "seed": "3",
            "scale": "0.25",
            "frames": str(FRAMES),
            "fps": "10.0",
            "speed_mps": "8.0",
        }
    }


def test_synth_mcap_alone_records_the_same_drive(drive: Drive, tmp_path: Path) -> None:
    """Without --out the drive is rendered for the recording only: the same images as with it."""
    from bev_service.recordings import iter_camera_messages, open_recording

    path = tmp_path / "alone.mcap"
    assert (
        main(["synth", "--drive", "--frames", "1", "--seed", "3", "--scale", "0.25", "--no-progress", "--mcap", str(path)]) == 0
    )
    messages = list(iter_camera_messages(open_recording(path, CAMERAS)))
    assert {m.camera: m.data for m in messages} == drive.jpegs[0]
    assert not list(tmp_path.glob("*.partial"))


def test_pngs_into_a_folder_that_exists_record_their_provenance(drive: Drive, tiny_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "drive").mkdir()  # made beforehand, empty
    assert replay([drive.mcap], tmp_path, tiny_weights, "--format", "png") == 0
    assert len(list((tmp_path / "drive").glob("*.png"))) == FRAMES
    provenance = json.loads((tmp_path / "drive" / "provenance.json").read_text())
    assert provenance["model_sha256"] == file_sha256(tiny_weights)


@pytest.mark.parametrize("fmt", ["png", "mcap"])
def test_an_output_that_would_be_the_recording_itself_is_refused(
    drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """PNGs of the rosbag2 folder ``bag`` into ``bag`` itself, or ``drive.mcap`` replayed over itself."""
    recording = write_rosbag2(tmp_path / "bag", drive_images(drive), storage="sqlite3") if fmt == "png" else drive.mcap
    before = sorted((p.name, p.stat().st_mtime_ns) for p in recording.parent.rglob("*"))
    assert replay([recording], recording.parent, tiny_weights, "--format", fmt) == 1
    assert f"FAILED: {recording}: the output would be the recording itself; write to another --out" in capsys.readouterr().out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in recording.parent.rglob("*")) == before


def test_a_drive_recording_cut_short_leaves_no_partial_file(rig: Rig, tmp_path: Path) -> None:
    from bev_service.cli.synth import drive_recorder
    from bev_service.synth.drive import DrivePlan

    path = tmp_path / "drive.mcap"
    plan = DrivePlan(frames=1, speed_mps=8.0, fps=10.0, start_s_m=0.0)
    with pytest.raises(KeyboardInterrupt), drive_recorder(path, rig, plan, seed=0, scale=0.25, encoding="ros2"):
        raise KeyboardInterrupt  # as a rendering error or ctrl-C between frame sets would
    assert list(tmp_path.iterdir()) == []
