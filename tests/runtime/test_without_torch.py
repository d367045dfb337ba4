"""Serving on ONNX Runtime needs no torch: the service, the runtime and a whole frame set run with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bev_service.shipped import MODELS

FLOAT_GRAPH = MODELS / "enet-pruned.onnx"

# torch set to None in sys.modules makes every `import torch` raise ImportError, as on an install without it.
SCRIPT = """
import sys
from pathlib import Path
sys.modules["torch"] = None
import numpy as np
import bev_service.service.app
from bev_service.calib.rigfile import load_rig
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.segmenter import load_segmenter
from bev_service.shipped import DEFAULT_RIG
from bev_service.errors import ModelError

rig = load_rig(DEFAULT_RIG)
pipeline = BevPipeline(rig, load_segmenter(sys.argv[1]), encoder=None)
h, w = pipeline.input_sizes_hw[0]
images = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
grid = pipeline.run({name: images for name in rig.camera_names}).grid
pipeline.close()
assert grid.shape == rig.grid.shape, grid.shape
try:
    load_segmenter(sys.argv[1].replace(".onnx", ".pt"))
except ModelError as exc:
    print("refused:", exc)
print("grid", grid.shape, sorted(set(np.unique(grid).tolist()))[:3])
"""


@pytest.mark.skipif(not FLOAT_GRAPH.is_file(), reason=f"no shipped graph at {FLOAT_GRAPH} (make train writes it)")
def test_a_frame_set_runs_on_onnx_runtime_with_torch_unimportable() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(FLOAT_GRAPH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "needs PyTorch" in done.stdout, "the torch backend says what is missing"
    assert "grid (400, 400)" in done.stdout


def test_a_command_that_needs_torch_says_so_without_it(tmp_path: Path) -> None:
    script = 'import sys; sys.modules["torch"] = None; from bev_service.cli.main import main; sys.exit(main(sys.argv[1:]))'
    model = MODELS / "enet-pruned.pt"
    args = ["export", "--model", str(model), "--out", str(tmp_path / "m.onnx")]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "needs torch, not installed" in done.stderr and "Traceback" not in done.stderr
