"""Fixtures of the calibration tests: synthetic importer inputs written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.calib.import_inputs import SV_NAMES, write_surround_yaml


@pytest.fixture
def synthetic_surround(tmp_path: Path) -> Path:
    """project_matrix = identity: the undistorted image is the strip itself, so the canvas geometry
    alone decides where each pixel lands."""
    folder = tmp_path / "sv" / "yaml"
    folder.mkdir(parents=True)
    for name in SV_NAMES:
        write_surround_yaml(folder, name)
    return folder.parent
