"""Shared fixtures of the synthetic-world tests: the default rig, one world, small renderers."""

from __future__ import annotations

import pytest

from bev_service.geometry.rig import Rig
from bev_service.synth import Renderer, SyntheticWorld, renderer_for


@pytest.fixture(scope="session")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=2)


@pytest.fixture(scope="session")
def small_renderer(rig: Rig) -> Renderer:
    """A quarter of the rig's image size (240 x 160)."""
    return renderer_for(rig, 0.25)
