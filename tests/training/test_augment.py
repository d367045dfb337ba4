"""Appearance randomization: the contract of ``augment``, each stage on and off, ``legacy()`` against the
augmentation it replaces, and the properties the stages promise (phase, mean, JPEG fidelity, noise level)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from bev_service.runtime.enet import network_input
from bev_service.training.augment import STAGES, AugmentConfig, augment, hue_rotation, line_kernel


def forced(config: AugmentConfig, *stages: str) -> AugmentConfig:
    """``config`` with ``stages`` running on every sample."""
    on: dict[str, Any] = {f"{stage}_p": 1.0 for stage in stages}
    return replace(config, **on)


def only(stage: str) -> AugmentConfig:
    return forced(AugmentConfig.off(), stage)


ALL_ON = forced(AugmentConfig(), *STAGES)
SIZES_HW = [(192, 256), (64, 96), (17, 11)]


def reference_augment(
    images: NDArray[np.uint8], labels: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentation training used before ``augment.py``, as it stood in ``train.py``."""
    b = images.shape[0]
    x = network_input(torch.from_numpy(images))  # (B, 3, H, W)
    y = torch.from_numpy(labels).long()  # (B, H, W)
    flip = torch.from_numpy(rng.random(b) < 0.5)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)

    def per_sample(lo: float, hi: float, channels: int = 1) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(lo, hi, size=(b, channels, 1, 1)).astype(np.float32))

    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * per_sample(0.7, 1.3) + mean  # contrast
    x = x * per_sample(0.7, 1.3) * per_sample(0.9, 1.1, channels=3)  # brightness, colour gain
    x = x.clamp(0.0, 1.0) ** per_sample(0.8, 1.25)  # gamma
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) * per_sample(0.0, 0.03)
    return (x + noise).clamp(0.0, 1.0), y


def scene(count: int = 4, size_hw: tuple[int, int] = (64, 96), seed: int = 0) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Camera-like crops: a shaded gradient with coloured rectangles (their labels) and mild noise."""
    rng = np.random.default_rng(seed)
    h, w = size_hw
    rows = np.linspace(0.0, 1.0, h)[None, :, None, None]
    images = (0.25 + 0.4 * rows) * rng.uniform(0.6, 1.0, size=(count, 1, 1, 3)) * np.ones((count, h, w, 3))
    labels = np.ones((count, h, w), dtype=np.uint8)
    for i in range(count):
        for _ in range(8):
            top, left = rng.integers(0, max(1, h - 4)), rng.integers(0, max(1, w - 4))
            tall, wide = rng.integers(2, max(3, h // 2)), rng.integers(2, max(3, w // 2))
            images[i, top : top + tall, left : left + wide] = rng.uniform(0.05, 0.95, size=3)
            labels[i, top : top + tall, left : left + wide] = rng.integers(0, 8)
    noisy = images * 255.0 + rng.normal(0.0, 3.0, size=images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels


def converted(images: NDArray[np.uint8]) -> torch.Tensor:
    return network_input(torch.from_numpy(images))


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10.0 * math.log10(1.0 / float(((a - b) ** 2).mean()))


class TestContract:
    @pytest.mark.parametrize("size_hw", SIZES_HW)
    @pytest.mark.parametrize("name", ["default", "all_on", "legacy", "off"])
    def test_shapes_dtypes_and_range_and_inputs_kept(self, size_hw: tuple[int, int], name: str) -> None:
        config = {"default": AugmentConfig(), "all_on": ALL_ON, "legacy": AugmentConfig.legacy(), "off": AugmentConfig.off()}[
            name
        ]
        images, labels = scene(3, size_hw)
        before = images.copy(), labels.copy()
        x, y = augment(images, labels, np.random.default_rng(0), config)
        assert x.shape == (3, 3, *size_hw) and x.dtype == torch.float32
        assert y.shape == (3, *size_hw) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and bool(torch.isfinite(x).all())
        np.testing.assert_array_equal(images, before[0])
        np.testing.assert_array_equal(labels, before[1])

    @pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
    def test_the_same_seed_gives_the_same_batch(self, config: AugmentConfig) -> None:
        images, labels = scene(4)
        a = augment(images, labels, np.random.default_rng(5), config)
        b = augment(images, labels, np.random.default_rng(5), config)
        c = augment(images, labels, np.random.default_rng(6), config)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])

    def test_wrong_inputs_are_refused(self) -> None:
        images, labels = scene(2)
        with pytest.raises(ValueError, match=r"uint8 images \(B, H, W, 3\)"):
            augment(images.astype(np.float32), labels, np.random.default_rng(0))
        with pytest.raises(ValueError, match="expected labels"):
            augment(images, labels[:, :-1], np.random.default_rng(0))


class TestLabels:
    def test_the_mirror_flips_labels_with_their_images(self) -> None:
        images, labels = scene(4)
        x, y = augment(images, labels, np.random.default_rng(0), replace(AugmentConfig.off(), mirror_p=1.0))
        assert torch.equal(x, converted(images).flip(-1))
        assert torch.equal(y, torch.from_numpy(labels).long().flip(-1))

    @pytest.mark.parametrize("seed", range(3))
    def test_labels_change_only_by_the_mirror_and_stay_on_their_pixels(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        labels = np.zeros((8, 64, 96), dtype=np.uint8)
        labels[:, :, :30] = 1  # a bright band on the left, mirrored to the right
        labels[rng.random(labels.shape) < 0.02] = 2
        images = np.where(labels[..., None] == 1, 220, 40).astype(np.uint8).repeat(3, axis=-1)
        x, y = augment(images, labels, np.random.default_rng(seed), replace(ALL_ON.without("randconv"), mirror_p=0.5))
        flipped = 0
        for i in range(8):
            same, mirrored = np.array_equal(y[i].numpy(), labels[i]), np.array_equal(y[i].numpy(), labels[i, :, ::-1])
            assert same or mirrored
            flipped += mirrored
            luma = x[i].mean(dim=0)
            assert float(luma[y[i] == 1].mean()) > float(luma[y[i] == 0].mean()) + 0.1
        assert 0 < flipped < 8


class TestLegacy:
    @pytest.mark.parametrize(("count", "size_hw", "seed"), [(8, (192, 256), 0), (8, (192, 256), 1), (3, (17, 11), 2)])
    def test_legacy_gives_the_outputs_of_the_previous_augmentation(self, count: int, size_hw: tuple[int, int], seed: int) -> None:
        images, labels = scene(count, size_hw, seed=seed)
        expected = reference_augment(images, labels, np.random.default_rng(seed))
        x, y = augment(images, labels, np.random.default_rng(seed), AugmentConfig.legacy())
        assert torch.equal(x, expected[0])
        assert torch.equal(y, expected[1])


class TestStages:
    @pytest.mark.parametrize("stage", STAGES)
    def test_each_stage_changes_the_image_when_forced_on(self, stage: str) -> None:
        images, labels = scene(4)
        x, y = augment(images, labels, np.random.default_rng(0), only(stage))
        assert float((x - converted(images)).abs().max()) > 1e-3
        if stage != "mirror":
            assert torch.equal(y, torch.from_numpy(labels).long())

    @pytest.mark.parametrize("stage", STAGES)
    def test_a_stage_turned_off_leaves_the_image_as_converted(self, stage: str) -> None:
        images, labels = scene(4)
        config = only(stage).without(stage)
        x, y = augment(images, labels, np.random.default_rng(0), config)
        assert torch.equal(x, converted(images))
        assert torch.equal(y, torch.from_numpy(labels).long())

    def test_amplitude_perturbation_keeps_the_phase_and_the_mean(self) -> None:
        rows, cols = np.mgrid[0:96, 0:128] / 16.0
        texture = 0.5 + 0.1 * np.sin(rows * 1.3 + np.cos(cols)) + 0.08 * np.cos(cols * 0.7 - rows * 0.4)  # (H, W)
        image = np.rint(255.0 * np.stack([texture, texture[::-1], texture[:, ::-1]], axis=-1))[None].astype(np.uint8)
        config = replace(AugmentConfig.off(), amplitude_p=1.0, amplitude_strength=(0.5, 0.5), amplitude_band_cyc_per_px=0.1)
        x, _ = augment(image, np.zeros(image.shape[:3], np.uint8), np.random.default_rng(3), config)
        before = converted(image)
        assert float(x.min()) > 0.0 and float(x.max()) < 1.0  # no clipping, so the stage alone is seen
        spectrum_in, spectrum_out = torch.fft.rfft2(before.double()), torch.fft.rfft2(x.double())
        ratio = spectrum_out.abs() / spectrum_in.abs().clamp(min=1e-12)
        significant = spectrum_in.abs() > 1e-3 * spectrum_in.abs().max()
        assert float((ratio[significant] - 1.0).abs().max()) > 0.1  # amplitudes changed
        phase_change = torch.angle(spectrum_out * spectrum_in.conj())[significant]
        assert float(phase_change.abs().max()) < 1e-3
        np.testing.assert_allclose(x.mean(dim=(2, 3)).numpy(), before.mean(dim=(2, 3)).numpy(), atol=1e-5)

    def test_amplitude_perturbation_keeps_the_mean_of_a_scene_within_a_bound(self) -> None:
        images, labels = scene(8)
        config = replace(AugmentConfig.off(), amplitude_p=1.0, amplitude_strength=(0.4, 0.4))
        x, _ = augment(images, labels, np.random.default_rng(0), config)
        shift = (x.mean(dim=(2, 3)) - converted(images).mean(dim=(2, 3))).abs()
        assert float(shift.max()) < 0.02

    @pytest.mark.parametrize("size_hw", [(192, 256), (64, 96)])
    def test_jpeg_changes_the_image_but_stays_close_at_quality_90(self, size_hw: tuple[int, int]) -> None:
        images, labels = scene(4, size_hw)
        config = replace(AugmentConfig.off(), jpeg_p=1.0, jpeg_quality=(90, 90))
        x, _ = augment(images, labels, np.random.default_rng(0), config)
        low, _ = augment(images, labels, np.random.default_rng(0), replace(config, jpeg_quality=(30, 30)))
        assert not torch.equal(x, converted(images))
        assert psnr_db(x, converted(images)) > 25.0
        assert psnr_db(low, converted(images)) < psnr_db(x, converted(images))

    def test_chromatic_aberration_moves_red_and_blue_only(self) -> None:
        images, labels = scene(4)
        x, _ = augment(images, labels, np.random.default_rng(0), replace(AugmentConfig.off(), chromatic_aberration_p=1.0))
        before = converted(images)
        assert torch.equal(x[:, 1], before[:, 1])
        assert float((x[:, 0] - before[:, 0]).abs().max()) > 0.01 and float((x[:, 2] - before[:, 2]).abs().max()) > 0.01

    def test_vignetting_darkens_the_corners_more_than_the_middle(self) -> None:
        images = np.full((4, 64, 96, 3), 200, dtype=np.uint8)
        config = replace(AugmentConfig.off(), vignetting_p=1.0, vignetting_centre_jitter=0.0, vignetting_strength=(0.3, 0.3))
        x, _ = augment(images, np.zeros((4, 64, 96), np.uint8), np.random.default_rng(0), config)
        grey = 200.0 / 255.0
        assert float(x[:, :, 32, 48].min()) > 0.99 * grey
        assert float(x[:, :, 0, 0].max()) < 0.75 * grey  # 30% darker at the corner of a centred falloff, at most 1 px off

    def test_noise_has_its_configured_level_and_grows_with_the_signal(self) -> None:
        levels = np.array([40, 210], dtype=np.uint8)  # dark left half, bright right half
        images = np.repeat(np.repeat(levels, 64)[None, None, :, None], 96, axis=1).repeat(3, axis=-1).repeat(8, axis=0)
        labels = np.zeros(images.shape[:3], np.uint8)
        read_only = replace(AugmentConfig.off(), noise_p=1.0, noise_sigma=(0.02, 0.02), noise_shot_sigma=(0.0, 0.0))
        shot_only = replace(read_only, noise_sigma=(0.0, 0.0), noise_shot_sigma=(0.05, 0.05))
        for config in (read_only, replace(read_only, noise_bank=False)):
            x, _ = augment(images, labels, np.random.default_rng(0), config)
            assert float((x - converted(images)).std()) == pytest.approx(0.02, rel=0.05)
        x, _ = augment(images, labels, np.random.default_rng(0), shot_only)
        residual = x - converted(images)
        dark, bright = float(residual[..., :64].std()), float(residual[..., 64:].std())
        assert bright / dark == pytest.approx(math.sqrt(210 / 40), rel=0.05)


class TestHelpers:
    def test_hue_rotation_keeps_greys_and_turns_red_to_green_in_a_third_turn(self) -> None:
        rotations = hue_rotation(np.array([0.3, -1.1, 2.0 * math.pi / 3.0]))
        np.testing.assert_allclose(rotations @ np.ones(3), np.ones((3, 3)), atol=1e-12)
        np.testing.assert_allclose(rotations[2] @ np.array([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-12)
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)

    def test_a_horizontal_line_kernel_spreads_its_length_over_the_middle_row(self) -> None:
        kernel = line_kernel(4.0, 0.0)  # a point moving 4 px: full weight on the 3 pixels it crosses, half on the ends
        assert kernel.shape == (5, 5) and kernel.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(kernel[2], [0.125, 0.25, 0.25, 0.25, 0.125], atol=0.01)
        vertical = line_kernel(4.0, math.pi / 2.0)
        np.testing.assert_allclose(vertical, kernel.T, atol=1e-6)


class TestConfig:
    def test_a_config_survives_json(self) -> None:
        config = replace(AugmentConfig(), hue_p=0.25, randconv_kernel_sizes=(3,))
        assert AugmentConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config

    def test_the_presets_are_the_settings_of_training(self) -> None:
        assert AugmentConfig.preset("full") == AugmentConfig() and AugmentConfig.preset("legacy") == AugmentConfig.legacy()
        style = AugmentConfig.preset("style")
        assert style.randconv_p > AugmentConfig().randconv_p and max(style.randconv_kernel_sizes) == 7
        style_fields = [k for k in asdict(style) if k.startswith(("randconv", "amplitude"))]
        defaults = {k: getattr(AugmentConfig(), k) for k in style_fields}
        assert replace(style, **defaults) == AugmentConfig(), "only the style stages differ from the defaults"
        with pytest.raises(ValueError, match="augment must be one of"):
            AugmentConfig.preset("heavy")

    def test_without_turns_the_named_stages_off(self) -> None:
        config = AugmentConfig().without("jpeg", "amplitude")
        assert config.jpeg_p == 0.0 and config.amplitude_p == 0.0 and config.blur_p == AugmentConfig().blur_p
        with pytest.raises(ValueError, match=r"unknown stages \['jpg'\]"):
            AugmentConfig().without("jpg")

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"blur_p": 1.5}, "blur_p must be a probability"),
            ({"saturation": (1.6, 0.4)}, "saturation must be a range"),
            ({"gamma": (0.0, 1.0)}, r"gamma must lie in \[0.05, 20.0\]"),
            ({"randconv_kernel_sizes": (2,)}, "must be odd"),
            ({"jpeg_quality": (30, 101)}, "jpeg_quality must lie in"),
        ],
    )
    def test_bad_settings_are_refused(self, change: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            replace(AugmentConfig(), **change)

    def test_unknown_stored_settings_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"\['sharpen_p'\] are not augmentation settings"):
            AugmentConfig.from_dict({"sharpen_p": 0.5})
