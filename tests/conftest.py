"""Shared fixtures: paths to the repository, the default rig and the real recordings of others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.runtime.weights import save_model
from bev_service.shipped import DEFAULT_RIG

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("BEV_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real surround-view recordings (../shared/data/real); tests skip without it."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent (set BEV_REAL_DATA to point at it)")
    return REAL_DATA


def real_folder(real_data: Path, name: str) -> Path:
    folder = real_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent from the real data folder")
    return folder


@pytest.fixture(scope="session")
def rig() -> Rig:
    """The default rig, loaded once for the whole run (rigs are immutable)."""
    return load_rig(DEFAULT_RIG)


@pytest.fixture(scope="session")
def projector(rig: Rig) -> BevProjector:
    """The default rig's projector; its tables are built once and cached per input size."""
    return BevProjector(rig)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny network (``tests.networks.TINY``: 64x96 input, the default rig's aspect ratio)."""
    from tests.networks import TINY, tiny_model

    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(path, tiny_model(), TINY, {"note": "untrained, for tests"})
    return path
