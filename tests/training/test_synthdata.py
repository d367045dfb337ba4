"""Rendered data sets: the cache gives back exactly what was rendered, and a changed input renders afresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bev_service.training import synthdata
from bev_service.training.synthdata import open_source, render_digest
from tests.conftest import DEFAULT_RIG
from tests.networks import TINY_SIZE_HW


def test_a_rendered_data_set_is_kept_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=2, seed=5, cache_dir=tmp_path)
    assert [p.name[: len("render-seed5-n2-96x64-")] for p in tmp_path.iterdir()] == ["render-seed5-n2-96x64-"]

    def render_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered again")

    monkeypatch.setattr(synthdata, "render_source", render_again)
    again = open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=2, seed=5, cache_dir=tmp_path)
    assert len(again) == len(first) == 2
    for i in range(2):
        a, b = first[i], again[i]
        assert a.name == b.name and a.images.shape == (4, *TINY_SIZE_HW, 3) and b.bev is not None
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.bev, b.bev)
        assert a.body is not None and a.body.any(), "the default rig's cameras see the car's body"
        np.testing.assert_array_equal(a.body, b.body)
        assert (a.labels[a.body] == 0).all(), "the body is labelled background"
    with pytest.raises(AssertionError, match="rendered again"):  # another seed is another data set
        open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=2, seed=6, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # and no temporary file is left behind


def test_the_digest_follows_the_rig_file_and_the_settings(tmp_path: Path) -> None:
    edited = tmp_path / "rig.yaml"
    edited.write_text(DEFAULT_RIG.read_text() + "\n# recalibrated\n")
    base = render_digest(DEFAULT_RIG, count=2, seed=5, input_size_hw=TINY_SIZE_HW)
    assert base == render_digest(DEFAULT_RIG, count=2, seed=5, input_size_hw=TINY_SIZE_HW)
    others = {
        render_digest(edited, count=2, seed=5, input_size_hw=TINY_SIZE_HW),
        render_digest(DEFAULT_RIG, count=3, seed=5, input_size_hw=TINY_SIZE_HW),
        render_digest(DEFAULT_RIG, count=2, seed=5, input_size_hw=(32, 48)),
    }
    assert base not in others and len(others) == 3


def test_an_unreadable_or_stale_file_is_rendered_again(tmp_path: Path) -> None:
    first = open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=1, seed=5, cache_dir=tmp_path)
    (kept,) = tmp_path.iterdir()
    kept.write_bytes(kept.read_bytes()[:1000])  # truncated, as by a full disk outside the atomic write
    stale = tmp_path / "render-seed5-n1-96x64-0123456789abcdef0123.npz"
    stale.write_bytes(b"from an older renderer")
    again = open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=1, seed=5, cache_dir=tmp_path)
    np.testing.assert_array_equal(first[0].images, again[0].images)
    assert sorted(tmp_path.iterdir()) == [kept] and kept.stat().st_size > 1000


def test_a_render_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    """The default rig's data set and a mixed-rig one of the same seed and count live side by side."""
    mixed = tmp_path / "render-seed5-n1-96x64-mixed-0123456789abcdef0123.npz"
    mixed.write_bytes(b"another data set")
    open_source("synth", DEFAULT_RIG, TINY_SIZE_HW, count=1, seed=5, cache_dir=tmp_path)
    assert mixed.is_file() and len(list(tmp_path.iterdir())) == 2
