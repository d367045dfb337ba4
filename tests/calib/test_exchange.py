"""A rig's cameras in the terms of other tools: standard distortion models, exact or fitted."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.calib.exchange import calibration_of
from bev_service.geometry.cameras import FisheyeCamera, Intrinsics, MeiCamera, OcamCamera, PinholeCamera, RadTan
from tests.geometry.test_cameras import _ocam_poly

SIZE_HW = (640, 960)
K = Intrinsics(fx=300.0, fy=298.0, cx=481.5, cy=318.2)


def test_exact_models() -> None:
    pinhole = calibration_of(PinholeCamera(K, SIZE_HW, RadTan(-0.2, 0.05, 0.001, -0.002, 0.01)))
    assert (pinhole.distortion_model, pinhole.d, pinhole.fitted) == ("plumb_bob", (-0.2, 0.05, 0.001, -0.002, 0.01), False)
    kb = calibration_of(FisheyeCamera(K, SIZE_HW, (0.01, -0.002, 3e-4, -1e-5)))
    assert (kb.distortion_model, kb.d, kb.fitted) == ("kannala_brandt", (0.01, -0.002, 3e-4, -1e-5), False)
    assert (kb.ros_distortion_model, pinhole.ros_distortion_model) == ("equidistant", "plumb_bob")
    np.testing.assert_array_equal(kb.k, K.matrix)


@pytest.mark.parametrize(
    "model",
    [
        MeiCamera(K, SIZE_HW, xi=0.8, distortion=RadTan(-0.05, 0.01)),
        MeiCamera(Intrinsics(420.0, 420.0, 480.0, 320.0), SIZE_HW, xi=1.3),
        OcamCamera(SIZE_HW, _ocam_poly(260.0, -12.0, 3.0), (479.2, 321.7)),
    ],
    ids=["mei-xi08", "mei-xi13", "ocam"],
)
def test_other_models_fit_kannala_brandt(model: MeiCamera | OcamCamera) -> None:
    """ROS and Foxglove have no Mei or OCam: the fitted Kannala-Brandt model lands within a pixel of the model's own
    projection over rays in the image, out to the edges."""
    calib = calibration_of(model)
    assert calib.distortion_model == "kannala_brandt" and calib.fitted
    k = calib.k
    fitted = FisheyeCamera(Intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]), SIZE_HW, calib.d)
    rng = np.random.default_rng(1)
    rays = rng.normal(size=(4000, 3))
    rays[:, 2] = np.abs(rays[:, 2]) * 0.8
    uv, valid = model.project(rays)
    h, w = SIZE_HW
    inside = valid & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    assert inside.sum() > 1000
    uv_fit, valid_fit = fitted.project(rays[inside])
    assert valid_fit.all()
    error = np.linalg.norm(uv_fit - uv[inside], axis=1)
    assert error.max() < 1.0, f"{error.max():.2f} px"
