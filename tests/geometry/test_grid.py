"""The BEV grid's row/column convention, cell centres and checks; the ego box."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid, EgoBox


class TestBevGrid:
    grid = BevGrid((-10.0, 10.0), (-6.0, 6.0), 0.05)

    def test_shape_of_the_default_size(self) -> None:
        assert BevGrid((-10.0, 10.0), (-10.0, 10.0), 0.05).shape == (400, 400)
        assert self.grid.shape == (400, 240)

    def test_row_zero_is_forward_and_column_zero_is_left(self) -> None:
        np.testing.assert_allclose(self.grid.vehicle_xy_from_cell(0, 0), [9.975, 5.975])
        np.testing.assert_allclose(self.grid.vehicle_xy_from_cell(399, 239), [-9.975, -5.975])
        centres = self.grid.cell_centres()
        assert centres.shape == (400, 240, 2)
        assert (np.diff(centres[:, 0, 0]) < 0).all()  # x falls down the rows
        assert (np.diff(centres[0, :, 1]) < 0).all()  # y falls along the columns

    def test_cell_from_point_inverts_cell_centres(self) -> None:
        centres = self.grid.cell_centres()
        rc = self.grid.cell_from_vehicle_xy(centres)
        r, c = np.meshgrid(np.arange(400), np.arange(240), indexing="ij")
        np.testing.assert_allclose(rc, np.stack([r + 0.5, c + 0.5], axis=-1), atol=1e-9)
        np.testing.assert_array_equal(np.floor(self.grid.cell_from_vehicle_xy([[10.0 - 1e-9, 0.01]])), [[0, 119]])

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (((-1.0, 1.0), (-1.0, 1.0), 0.0), "cell_size_m must be positive"),
            (((-1.0, 1.0), (-1.0, 1.0), -0.1), "cell_size_m must be positive"),
            (((1.0, -1.0), (-1.0, 1.0), 0.1), "x_range_m must be"),
            (((-1.0, 1.0), (-1.0, 1.03), 0.1), "whole number"),
        ],
    )
    def test_rejects_bad_grids(self, args: tuple, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            BevGrid(*args)

    def test_metadata_states_the_convention(self) -> None:
        meta = self.grid.metadata()
        assert meta["rows"] == 400 and meta["cols"] == 240 and meta["cell_size_m"] == 0.05
        assert meta["x_range_m"] == [-10.0, 10.0] and meta["y_range_m"] == [-6.0, 6.0]
        assert "row 0 = largest x" in meta["row_col_convention"] and "col 0 = largest y" in meta["row_col_convention"]
        assert meta["unknown_value"] == UNKNOWN == 255 and meta["ego_value"] == EGO == 254


class TestEgoBox:
    def test_contains_is_inclusive_and_vectorised(self) -> None:
        ego = EgoBox((-2.35, 2.35), (-1.0, 1.0))
        inside = ego.contains([[0.0, 0.0], [2.35, 1.0], [2.36, 0.0], [0.0, -1.01]])
        np.testing.assert_array_equal(inside, [True, True, False, False])

    def test_rejects_an_empty_box(self) -> None:
        with pytest.raises(ValueError, match="ego y_range_m"):
            EgoBox((-1.0, 1.0), (1.0, 1.0))
