"""The synth bench (bench/synth.py) in quick mode: the closing JSON line carries the figures.
Timings are not asserted (the machine is shared)."""

from __future__ import annotations

import contextlib
import io

from bench import synth
from bench.common import parse_json_line


def test_quick_run_ends_with_the_json_line_of_the_synth_bench() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert synth.main(["--quick", "--repeat", "1"]) == 0
    text = out.getvalue()
    assert text.rstrip("\n").splitlines()[-1].startswith('{"bench": "synth", "frame_set_s": ')
    figures = parse_json_line(text)
    assert figures["frame_set_s"] > 0 and figures["image_size_hw"] == [640, 960] and figures["cameras"] == 4
    assert set(figures["stages_s"]) == {"scene", "intersect", "ground", "shade", "finish", "bev"}
    assert figures["world_build_s"] > 0 and figures["ray_tables_build_s"] > 0
