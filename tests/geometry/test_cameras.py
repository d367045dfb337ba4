"""Camera models: golden values by hand, round trips over the whole image, OpenCV agreement within
85 degrees, and no folding beyond the model's field of view."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
from numpy.polynomial import Polynomial

from bev_service.geometry.cameras import (
    CameraModel,
    FisheyeCamera,
    Intrinsics,
    MeiCamera,
    OcamCamera,
    PinholeCamera,
    RadTan,
)

SIZE_HW = (211, 317)  # odd on purpose
K = Intrinsics(fx=151.0, fy=149.0, cx=158.3, cy=104.7)
PINHOLE_K = Intrinsics(fx=301.0, fy=297.0, cx=158.3, cy=104.7)


def _ocam_poly(f: float, a2: float, a3: float) -> tuple[float, ...]:
    """rho(theta) = f s + a2 s^2 + a3 s^3 with s = theta + pi/2 (angle off the axis), in powers of theta."""
    s = Polynomial([np.pi / 2, 1.0])
    return tuple(float(c) for c in (f * s + a2 * s**2 + a3 * s**3).coef)


CAMERAS: dict[str, CameraModel] = {
    "pinhole-none": PinholeCamera(PINHOLE_K, SIZE_HW),
    "pinhole-barrel": PinholeCamera(PINHOLE_K, SIZE_HW, RadTan(-0.28, 0.07, 0.0009, -0.0011, -0.006)),
    "pinhole-pincushion": PinholeCamera(PINHOLE_K, SIZE_HW, RadTan(0.12, 0.01, -0.002, 0.001)),
    "fisheye-equidistant": FisheyeCamera(K, SIZE_HW),
    "fisheye-kb": FisheyeCamera(K, SIZE_HW, (-0.02, 0.003, -0.0005, 2e-5)),
    "fisheye-kb-limited": FisheyeCamera(K, SIZE_HW, (0.05, -0.01, 0.002, -1e-4), max_angle_deg=100.0),
    "mei-xi0": MeiCamera(PINHOLE_K, SIZE_HW, xi=0.0, distortion=RadTan(-0.1, 0.01)),
    "mei-xi08": MeiCamera(K, SIZE_HW, xi=0.8, distortion=RadTan(-0.1, 0.02, 0.001, 0.001)),
    "mei-xi15": MeiCamera(K, SIZE_HW, xi=1.5, distortion=RadTan(-0.05)),
    "ocam-equidistant": OcamCamera(SIZE_HW, _ocam_poly(150.0, 0.0, 0.0), (158.3, 104.7)),
    "ocam-affine": OcamCamera(SIZE_HW, _ocam_poly(140.0, -6.0, 4.0), (158.3, 104.7), (1.002, 0.0005, -0.0003)),
}


def _pixel_grid(size_hw: tuple[int, int]) -> np.ndarray:
    v, u = np.mgrid[0 : size_hw[0], 0 : size_hw[1]].astype(np.float64)
    return np.stack([u, v], axis=-1)  # (h, w, 2)


def _sphere(n: int, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (rad) between rays, accurate near zero (arccos of a dot product is not)."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(axis=-1))


def _inside(pixels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    u, v = pixels[..., 0], pixels[..., 1]
    with np.errstate(invalid="ignore"):
        return (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)


def _off_axis_deg(rays: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(np.hypot(rays[..., 0], rays[..., 1]), rays[..., 2]))


@pytest.mark.parametrize("name", CAMERAS)
class TestRoundTrip:
    def test_pixel_ray_pixel_over_the_whole_image(self, name: str) -> None:
        cam = CAMERAS[name]
        pixels = _pixel_grid(cam.image_size_hw)
        rays, valid = cam.unproject(pixels)
        back, valid_back = cam.project(rays)
        assert valid.mean() > 0.5, "most of the image should lift to rays"
        assert valid_back[valid].all()
        assert np.abs(back - pixels)[valid].max() < 1e-6
        np.testing.assert_allclose(np.linalg.norm(rays[valid], axis=-1), 1.0, atol=1e-12)

    def test_ray_pixel_ray_for_every_ray_that_lands_in_the_image(self, name: str) -> None:
        cam = CAMERAS[name]
        rays = _sphere(50_000)
        pixels, valid = cam.project(rays)
        seen = valid & _inside(pixels, cam.image_size_hw)
        assert seen.sum() > 1000
        back, valid_back = cam.unproject(pixels[seen])
        assert valid_back.all()
        assert _angle_between(back, rays[seen]).max() < 1e-9

    def test_invalid_outputs_are_nan_and_valid_ones_finite(self, name: str) -> None:
        cam = CAMERAS[name]
        pixels, valid = cam.project(_sphere(20_000, seed=1))
        assert np.isnan(pixels[~valid]).all() and np.isfinite(pixels[valid]).all()
        rays, valid = cam.unproject(_pixel_grid(cam.image_size_hw) * 3 - 200)  # reaches far outside the image
        assert np.isnan(rays[~valid]).all() and np.isfinite(rays[valid]).all()

    def test_non_finite_input_is_invalid(self, name: str) -> None:
        cam = CAMERAS[name]
        _, valid = cam.project([[np.nan, 0.0, 1.0], [0.0, np.inf, 1.0], [0.0, 0.0, 0.0]])
        assert not valid.any()
        _, valid = cam.unproject([[np.nan, 10.0], [10.0, np.inf]])
        assert not valid.any()

    def test_keeps_shape_dtype_and_input(self, name: str) -> None:
        cam = CAMERAS[name]
        points = np.random.default_rng(2).normal(size=(3, 5, 3)) + np.array([0.0, 0.0, 3.0])
        points_before = points.copy()
        pixels, valid = cam.project(points)
        assert pixels.shape == (3, 5, 2) and pixels.dtype == np.float64
        assert valid.shape == (3, 5) and valid.dtype == np.bool_
        rays, valid = cam.unproject(pixels[valid])
        assert rays.shape == (int(valid.size), 3)
        np.testing.assert_array_equal(points, points_before)
        pixels_f32 = np.asarray(pixels[:1], dtype=np.float32)
        pixels_before = pixels_f32.copy()
        cam.unproject(pixels_f32)
        np.testing.assert_array_equal(pixels_f32, pixels_before)

    def test_rejects_wrong_last_dimension(self, name: str) -> None:
        cam = CAMERAS[name]
        with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
            cam.project(np.zeros((4, 2)))
        with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
            cam.unproject(np.zeros((4, 3)))


class TestGolden:
    def test_equidistant_fisheye_puts_60_degrees_at_f_pi_over_3(self) -> None:
        cam = FisheyeCamera(Intrinsics(300.0, 300.0, 479.5, 319.5), (640, 960))
        ray = [np.sin(np.pi / 3), 0.0, np.cos(np.pi / 3)]
        pixel, valid = cam.project(ray)
        assert valid
        np.testing.assert_allclose(pixel, [479.5 + 300.0 * np.pi / 3, 319.5], atol=1e-9)

    def test_equidistant_fisheye_beyond_90_degrees(self) -> None:
        cam = FisheyeCamera(Intrinsics(300.0, 300.0, 479.5, 319.5), (640, 960))
        angle = np.deg2rad(100.0)
        ray = [0.0, -np.sin(angle), np.cos(angle)]  # 100 deg off axis, up in the image
        pixel, valid = cam.project(ray)
        assert valid
        np.testing.assert_allclose(pixel, [479.5, 319.5 - 300.0 * angle], atol=1e-9)

    def test_kannala_brandt_polynomial(self) -> None:
        k = (-0.02, 0.003, -0.0005, 2e-5)
        cam = FisheyeCamera(Intrinsics(300.0, 280.0, 400.0, 300.0), (600, 800), k)
        theta = np.deg2rad(70.0)
        theta_d = theta * (1 + k[0] * theta**2 + k[1] * theta**4 + k[2] * theta**6 + k[3] * theta**8)
        direction = np.array([0.6, 0.8])
        ray = [*(np.sin(theta) * direction), np.cos(theta)]
        pixel, _ = cam.project(ray)
        np.testing.assert_allclose(pixel, [400.0 + 300.0 * theta_d * 0.6, 300.0 + 280.0 * theta_d * 0.8], atol=1e-9)

    def test_pinhole_with_radial_and_tangential_terms(self) -> None:
        d = RadTan(0.1, -0.05, 0.001, 0.002, 0.01)
        cam = PinholeCamera(Intrinsics(500.0, 510.0, 320.0, 240.0), (480, 640), d)
        x, y = 0.25, 0.5  # the point (1, 2, 4)
        r2 = x * x + y * y
        radial = 1 + d.k1 * r2 + d.k2 * r2**2 + d.k3 * r2**3
        xd = x * radial + 2 * d.p1 * x * y + d.p2 * (r2 + 2 * x * x)
        yd = y * radial + d.p1 * (r2 + 2 * y * y) + 2 * d.p2 * x * y
        pixel, valid = cam.project([1.0, 2.0, 4.0])
        assert valid
        np.testing.assert_allclose(pixel, [320.0 + 500.0 * xd, 240.0 + 510.0 * yd], atol=1e-9)

    def test_mei_with_xi_zero_is_the_pinhole(self) -> None:
        d = RadTan(-0.1, 0.01, 0.001, -0.002)
        mei = MeiCamera(PINHOLE_K, SIZE_HW, xi=0.0, distortion=d)
        pinhole = PinholeCamera(PINHOLE_K, SIZE_HW, d)
        rays = _sphere(5000)
        mei_px, mei_valid = mei.project(rays)
        pin_px, pin_valid = pinhole.project(rays)
        both = mei_valid & pin_valid
        assert both.sum() > 1000 and (mei_valid[pin_valid]).all()
        np.testing.assert_allclose(mei_px[both], pin_px[both], atol=1e-9)
        pixels = _pixel_grid(SIZE_HW)
        np.testing.assert_allclose(mei.unproject(pixels)[0], pinhole.unproject(pixels)[0], atol=1e-12)

    def test_mei_with_xi_one_is_stereographic(self) -> None:
        # The unit sphere projected from its pole (0, 0, -1): a ray at theta lands at f tan(theta / 2),
        # which reaches 120 degrees off axis and more.
        cam = MeiCamera(Intrinsics(200.0, 200.0, 500.0, 400.0), (801, 1001), xi=1.0)
        for theta_deg in (30.0, 90.0, 120.0):
            theta = np.deg2rad(theta_deg)
            pixel, valid = cam.project([np.sin(theta), 0.0, np.cos(theta)])
            assert valid
            np.testing.assert_allclose(pixel, [500.0 + 200.0 * np.tan(theta / 2), 400.0], atol=1e-9)

    def test_ocam_against_the_readme_formula(self) -> None:
        # ../shared/data/real/README.md: theta = atan(-1 / |(x/z, y/z)|), rho = poly(theta),
        # (x', y') = (x, y) / |(x, y)| * rho, u = c x' + d y' + xc, v = e x' + y' + yc.
        poly = (628.47, 470.66, -2.61, 19.16, 77.97, -28.09, -37.71, 93.05, 128.9, 59.3, 9.68)  # a fitted lens, rounded
        c, d, e = 0.9998, 3.5e-5, -2.2e-4
        xc, yc = 644.59, 492.74
        cam = OcamCamera((960, 1280), poly, (xc, yc), (c, d, e))
        points = np.array([[0.3, -0.2, 1.0], [1.0, 0.5, 0.4], [-2.0, 0.1, 0.2], [0.01, 0.02, 5.0]])
        for x, y, z in points:
            theta = np.arctan(-1.0 / np.hypot(x / z, y / z))
            rho = sum(coef * theta**i for i, coef in enumerate(poly))
            xp, yp = x / np.hypot(x, y) * rho, y / np.hypot(x, y) * rho
            pixel, valid = cam.project([x, y, z])
            assert valid
            np.testing.assert_allclose(pixel, [c * xp + d * yp + xc, e * xp + yp + yc], atol=1e-9)

    def test_optical_axis_lands_on_the_centre(self) -> None:
        for name, cam in CAMERAS.items():
            pixel, valid = cam.project([0.0, 0.0, 2.5])
            if isinstance(cam, OcamCamera):
                centre = cam.center_xy
            else:
                assert isinstance(cam, (PinholeCamera, FisheyeCamera, MeiCamera))
                centre = (cam.intrinsics.cx, cam.intrinsics.cy)
            assert valid, name
            np.testing.assert_allclose(pixel, centre, atol=1e-6, err_msg=name)


def _opencv_fisheye(cam: FisheyeCamera) -> Callable[[np.ndarray], np.ndarray]:
    def project(points: np.ndarray) -> np.ndarray:
        out, _ = cv2.fisheye.projectPoints(
            points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.intrinsics.matrix, np.array(cam.k)
        )
        return out.reshape(-1, 2)

    return project


def _opencv_pinhole(cam: PinholeCamera) -> Callable[[np.ndarray], np.ndarray]:
    d = cam.distortion
    coeffs = np.array([d.k1, d.k2, d.p1, d.p2, d.k3])

    def project(points: np.ndarray) -> np.ndarray:
        out, _ = cv2.projectPoints(points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.intrinsics.matrix, coeffs)
        return out.reshape(-1, 2)

    return project


class TestOpenCV:
    @pytest.mark.parametrize("name", ["fisheye-equidistant", "fisheye-kb", "fisheye-kb-limited"])
    def test_fisheye_matches_opencv_within_85_degrees(self, name: str) -> None:
        cam = CAMERAS[name]
        assert isinstance(cam, FisheyeCamera)
        rays = _sphere(20_000)
        rays = rays[_off_axis_deg(rays) < 85.0]
        rays = rays * np.random.default_rng(3).uniform(0.5, 20.0, size=(len(rays), 1))  # points, not just directions
        ours, valid = cam.project(rays)
        assert valid.all()
        assert np.abs(ours - _opencv_fisheye(cam)(rays)).max() < 1e-6

    @pytest.mark.parametrize("name", ["pinhole-none", "pinhole-barrel", "pinhole-pincushion"])
    def test_pinhole_matches_opencv_where_valid(self, name: str) -> None:
        cam = CAMERAS[name]
        assert isinstance(cam, PinholeCamera)
        rays = _sphere(20_000)
        rays = rays[_off_axis_deg(rays) < 85.0]
        ours, valid = cam.project(rays)
        # Within 85 degrees everything is valid unless the distortion folds first (strong barrel).
        assert valid.all() or name == "pinhole-barrel"
        assert valid.mean() > 0.3
        assert np.abs(ours[valid] - _opencv_pinhole(cam)(rays[valid])).max() < 1e-6

    def test_opencv_fisheye_folds_a_ray_behind_the_camera_that_we_refuse(self) -> None:
        cam = FisheyeCamera(K, SIZE_HW, (-0.02, 0.003, -0.0005, 2e-5), max_angle_deg=100.0)
        ray = np.array([[0.3, 0.2, -1.0]])  # 160 degrees off axis: behind the camera
        opencv_pixel = _opencv_fisheye(cam)(ray)
        assert _inside(opencv_pixel, SIZE_HW).all(), "OpenCV lands the ray on a valid-looking pixel"
        ours, valid = cam.project(ray)
        assert not valid.any() and np.isnan(ours).all()

    def test_opencv_pinhole_folds_a_ray_behind_the_camera_that_we_refuse(self) -> None:
        cam = CAMERAS["pinhole-pincushion"]
        assert isinstance(cam, PinholeCamera)
        ray = np.array([[0.05, 0.03, -1.0]])
        assert _inside(_opencv_pinhole(cam)(ray), SIZE_HW).all()
        ours, valid = cam.project(ray)
        assert not valid.any() and np.isnan(ours).all()


class TestFieldOfView:
    def test_fisheye_is_valid_up_to_its_max_angle_and_not_beyond(self) -> None:
        cam = FisheyeCamera(K, SIZE_HW, (-0.02, 0.003, -0.0005, 2e-5), max_angle_deg=110.0)
        angles = np.deg2rad([0.0, 45.0, 89.9, 90.0, 95.0, 109.9, 110.1, 150.0, 180.0])
        rays = np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], axis=-1)
        pixels, valid = cam.project(rays)
        np.testing.assert_array_equal(valid, [True] * 6 + [False] * 3)
        assert np.isnan(pixels[~valid]).all()
        assert np.all(np.diff(pixels[valid, 0]) > 0), "image radius grows with the angle through 90 degrees"

    def test_fisheye_without_limit_stops_where_the_polynomial_folds(self) -> None:
        k = (0.0, -0.05, 0.0, 0.0)  # theta_d = theta - 0.05 theta^5
        cam = FisheyeCamera(K, SIZE_HW, k)
        fold = (1 / (5 * 0.05)) ** 0.25  # d theta_d / d theta = 1 - 0.25 theta^4 = 0 at sqrt(2) rad (81 deg)
        assert cam.max_angle == pytest.approx(fold, abs=2e-4)
        assert cam.max_angle <= fold
        _, valid = cam.project([[np.sin(fold + 0.01), 0.0, np.cos(fold + 0.01)]])
        assert not valid.any()

    def test_pinhole_refuses_points_behind_or_on_the_image_plane(self) -> None:
        cam = CAMERAS["pinhole-none"]
        pixels, valid = cam.project([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.1, 0.1, -1e-3]])
        assert not valid.any() and np.isnan(pixels).all()

    def test_pinhole_unproject_refuses_pixels_beyond_the_distortion_fold(self) -> None:
        # k1 = -0.3: r (1 - 0.3 r^2) peaks at r = 1.054, r_d = 0.703; farther distorted radii have
        # no preimage, and a Newton iterate that stops somewhere must not pass for an answer.
        cam = PinholeCamera(Intrinsics(200.0, 200.0, 199.5, 149.5), (300, 400), RadTan(-0.3))
        pixels = _pixel_grid(cam.image_size_hw)
        rays, valid = cam.unproject(pixels)
        radius_n = np.hypot(pixels[..., 0] - 199.5, pixels[..., 1] - 149.5) / 200.0
        r_fold = 1 / np.sqrt(0.9)
        r_d_max = r_fold * (1 - 0.3 * r_fold**2)
        assert not valid[radius_n > r_d_max + 1e-3].any()
        assert valid[radius_n < r_d_max - 1e-2].all()
        back, _ = cam.project(rays[valid])
        assert np.abs(back - pixels[valid]).max() < 1e-6

    def test_mei_beyond_its_fold_is_invalid(self) -> None:
        cam = MeiCamera(K, SIZE_HW, xi=1.5)
        # xi > 1: the model folds where the sphere point's z drops to -1/xi.
        z_fold = -1 / 1.5
        rays = np.array([[np.sqrt(1 - z * z), 0.0, z] for z in (z_fold + 0.01, z_fold - 0.01)])
        _, valid = cam.project(rays)
        np.testing.assert_array_equal(valid, [True, False])

    def test_ocam_rejects_a_polynomial_that_is_not_zero_on_the_axis(self) -> None:
        with pytest.raises(ValueError, match="rho ~ 0 on the optical axis"):
            OcamCamera(SIZE_HW, (10.0, 150.0), (158.3, 104.7))

    def test_ocam_rejects_a_polynomial_that_decreases_from_the_axis(self) -> None:
        with pytest.raises(ValueError, match="must increase"):
            OcamCamera(SIZE_HW, _ocam_poly(-50.0, 0.0, 0.0), (158.3, 104.7))


class TestConstruction:
    @pytest.mark.parametrize(
        ("build", "message"),
        [
            (lambda: PinholeCamera(Intrinsics(0.0, 1.0, 0, 0), SIZE_HW), "focal lengths must be positive"),
            (lambda: FisheyeCamera(K, (0, 10)), "image_size_hw must be positive"),
            (lambda: FisheyeCamera(K, SIZE_HW, (0.0, 0.0, 0.0)), "needs 4 coefficients"),  # type: ignore[arg-type]
            (lambda: MeiCamera(K, SIZE_HW, xi=-0.1), "xi must be >= 0"),
            (lambda: OcamCamera(SIZE_HW, (0.0,), (1.0, 1.0)), "at least 2 coefficients"),
            (lambda: OcamCamera(SIZE_HW, _ocam_poly(150.0, 0, 0), (1.0, 1.0), (1.0, 1.0, 1.0)), "singular"),
            (lambda: OcamCamera((10, -1), _ocam_poly(150.0, 0, 0), (1.0, 1.0)), "image_size_hw must be positive"),
        ],
    )
    def test_bad_parameters_raise(self, build: Callable[[], object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            build()

    def test_every_model_satisfies_the_protocol(self) -> None:
        assert all(isinstance(cam, CameraModel) for cam in CAMERAS.values())
