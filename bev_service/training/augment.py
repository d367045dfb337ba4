"""Appearance randomization of training batches, so that a network trained on rendered frames holds up on real cameras.

``augment(images, labels, rng, config)`` turns a batch of uint8 crops into the network's float input and int64
targets. Its stages run in the order a camera forms an image, each on a sample with its own probability and
with strengths drawn per sample:

1. mirror (the only geometric stage, and the only one that changes labels: every class is symmetric under it);
2. scene style: the low-frequency amplitude spectrum (``amplitude``) and a random convolution (``randconv``);
3. lens: chromatic aberration, Gaussian blur, motion blur, vignetting;
4. sensor and processing: contrast, brightness, channel gain, white balance, hue, saturation, gamma;
5. sensor noise, Gaussian with a signal-dependent part, and last JPEG re-compression.

``AugmentConfig`` holds each stage's probability (``<stage>_p``; 0 turns it off) and strengths; ``legacy()`` is the
augmentation training used before (mirror, contrast, brightness, colour gain, gamma, noise), output for output.
A stage draws from ``rng`` only when its probability is above zero, so turning one off changes the draws of the
stages after it: an ablation compares distributions, not paired batches.

The renderer already gives each frame set one camera's exposure, white balance, vignetting, blur, noise and JPEG
compression (``synth/appearance.py``); these stages vary them per crop and step, on top, and add what it lacks.
Time on one core for a batch of 8 crops of 256x192: 11 ms at best and 17 ms on average with the defaults (the
stages fire at random), 30 ms with every stage on every sample, 20 ms with ``legacy()``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Self

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

from bev_service.runtime.enet import network_input

Range = tuple[float, float]
F32 = NDArray[np.float32]

# Allowed values of every strength setting (inclusive); each ``<stage>_p`` lies in [0, 1].
_BOUNDS: dict[str, Range] = {
    "amplitude_strength": (0.0, 2.0),
    "amplitude_band_cyc_per_px": (1e-3, 0.5),
    "randconv_kernel_sizes": (1, 7),
    "randconv_mix": (0.0, 1.0),
    "chromatic_aberration_scale": (0.0, 0.1),
    "blur_sigma_px": (0.0, 10.0),
    "motion_blur_length_px": (1.0, 31.0),
    "vignetting_strength": (0.0, 0.95),
    "vignetting_centre_jitter": (0.0, 1.0),
    "contrast": (0.0, 10.0),
    "brightness": (0.0, 10.0),
    "channel_gain": (0.0, 10.0),
    "white_balance_temperature": (0.0, 0.9),
    "white_balance_tint": (0.0, 0.9),
    "hue_turns": (0.0, 0.5),
    "saturation": (0.0, 10.0),
    "gamma": (0.05, 20.0),
    "noise_sigma": (0.0, 1.0),
    "noise_shot_sigma": (0.0, 1.0),
    "jpeg_quality": (1, 100),
}
_LUMA_RGB = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, JPEG's own luma weights
_FIELD_GRID = 5  # nodes per side of the low-resolution random field over the amplitude band (odd: one at DC)
_BANK_SIZE, _BANK_SEED = 1 << 22, 20240611  # 16 MiB of standard normals for the sensor noise


@dataclass(frozen=True)
class AugmentConfig:
    """Probability and strengths of each stage; ranges are ``(low, high)`` of a uniform draw per sample.

    Plain data: ``asdict`` gives its JSON and ``from_dict`` reads that back. The fields run in pipeline order.
    """

    mirror_p: float = 0.5
    amplitude_p: float = 0.3
    amplitude_strength: Range = (0.0, 0.3)  # s of the gain exp(s * field) on the low band's amplitudes
    amplitude_band_cyc_per_px: float = 0.05  # edge of the low band
    randconv_p: float = 0.1
    randconv_kernel_sizes: tuple[int, ...] = (1, 3)
    randconv_mix: Range = (0.1, 0.5)  # weight of the filtered image in the blend
    chromatic_aberration_p: float = 0.3
    chromatic_aberration_scale: Range = (0.003, 0.01)  # red magnified by 1 + s, blue by 1 - s (or the reverse)
    blur_p: float = 0.3
    blur_sigma_px: Range = (0.3, 1.5)
    motion_blur_p: float = 0.1
    motion_blur_length_px: Range = (3.0, 9.0)  # travel during the exposure
    vignetting_p: float = 0.2
    vignetting_strength: Range = (0.1, 0.5)  # darkening at the corners of a centred falloff
    vignetting_centre_jitter: float = 0.5  # the falloff's centre moves by up to this share of the half-size
    contrast_p: float = 0.8
    contrast: Range = (0.6, 1.4)
    brightness_p: float = 0.8
    brightness: Range = (0.6, 1.4)
    channel_gain_p: float = 0.5
    channel_gain: Range = (0.95, 1.05)  # independent per channel
    white_balance_p: float = 0.8
    white_balance_temperature: float = 0.15  # red gain 1 + t, blue gain 1 - t, |t| up to this
    white_balance_tint: float = 0.05  # green gain 1 + u, |u| up to this
    hue_p: float = 0.5
    hue_turns: float = 0.08  # rotation about the grey axis, up to this share of a full turn either way
    saturation_p: float = 0.8
    saturation: Range = (0.4, 1.6)
    gamma_p: float = 0.8
    gamma: Range = (0.7, 1.4)
    noise_p: float = 0.8
    noise_sigma: Range = (0.0, 0.02)  # signal-independent (read) noise
    noise_shot_sigma: Range = (0.0, 0.04)  # signal-dependent noise: its standard deviation at full scale
    noise_bank: bool = True  # windows of a fixed bank of normals instead of fresh ones (11 ms per batch of 8 crops)
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be a probability in [0, 1], got {value}")
            if isinstance(value, tuple) and f.name != "randconv_kernel_sizes" and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"{f.name} must be a range (low, high) with low <= high, got {value}")
            lo, hi = _BOUNDS.get(f.name, (-math.inf, math.inf))
            values = value if isinstance(value, tuple) else (value,)
            if not all(lo <= v <= hi for v in values):
                raise ValueError(f"{f.name} must lie in [{lo}, {hi}], got {value}")
        if not self.randconv_kernel_sizes or any(k % 2 == 0 for k in self.randconv_kernel_sizes):
            raise ValueError(f"randconv_kernel_sizes must be odd sizes such as (1, 3), got {self.randconv_kernel_sizes}")
        if any(not isinstance(q, int) for q in self.jpeg_quality):
            raise ValueError(f"jpeg_quality must be whole numbers, got {self.jpeg_quality}")

    @classmethod
    def legacy(cls) -> Self:
        """The augmentation training used before this module: mirror, contrast, brightness, colour gain, gamma and
        noise, always on with their old ranges, drawing from ``rng`` as it did (the same outputs for the same rng)."""
        return replace(
            cls.off(),
            mirror_p=0.5,
            contrast_p=1.0,
            contrast=(0.7, 1.3),
            brightness_p=1.0,
            brightness=(0.7, 1.3),
            channel_gain_p=1.0,
            channel_gain=(0.9, 1.1),
            gamma_p=1.0,
            gamma=(0.8, 1.25),
            noise_p=1.0,
            noise_sigma=(0.0, 0.03),
            noise_shot_sigma=(0.0, 0.0),
            noise_bank=False,
        )

    @classmethod
    def style(cls) -> Self:
        """The defaults with the scene-style stages strong: a random convolution on half the crops, with kernels
        up to 7x7 and mixed in at up to full weight (RandConv's ranges, Xu et al. 2021), and the amplitude spectrum
        perturbed on more than half of them, twice as strongly."""
        return replace(
            cls(),
            amplitude_p=0.6,
            amplitude_strength=(0.0, 0.6),
            randconv_p=0.5,
            randconv_kernel_sizes=(1, 3, 5, 7),
            randconv_mix=(0.2, 1.0),
        )

    @classmethod
    def preset(cls, name: str) -> Self:
        """``"legacy"``, ``"full"`` (the defaults) or ``"style"``: the values of the ``augment`` setting."""
        if name == "legacy":
            return cls.legacy()
        if name == "style":
            return cls.style()
        if name != "full":
            raise ValueError(f"augment must be one of ('legacy', 'full', 'style'), got {name!r}")
        return cls()

    @classmethod
    def off(cls) -> Self:
        """Every stage off: ``augment`` only converts (a base for turning single stages on)."""
        off: dict[str, Any] = {f"{stage}_p": 0.0 for stage in STAGES}
        return cls(**off)

    def without(self, *stages: str) -> Self:
        """This config with the named stages turned off (``config.without("jpeg", "amplitude")``)."""
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; the stages are {list(STAGES)}")
        off: dict[str, Any] = {f"{stage}_p": 0.0 for stage in stages}
        return replace(self, **off)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """A config from its JSON (``asdict``'s dict, whose tuples JSON turned into lists); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown} are not augmentation settings; expected some of {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STAGES: tuple[str, ...] = tuple(f.name.removesuffix("_p") for f in fields(AugmentConfig) if f.name.endswith("_p"))


def augment(
    images: NDArray[np.uint8],
    labels: NDArray[np.uint8],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, H, W, 3) and (B, H, W) to float (B, 3, H, W) in [0, 1] and int64 (B, H, W) targets.

    Deterministic in ``rng``; the inputs are not modified. Only the mirror changes labels.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:3]:
        raise ValueError(f"expected labels {images.shape[:3]} (one per pixel of the images), got {labels.shape}")
    x = network_input(torch.from_numpy(images))  # (B, 3, H, W), channels-last in memory
    y = torch.from_numpy(labels).long()  # (B, H, W)
    flip = _gate(rng, config.mirror_p, len(x))
    for i in _samples(flip):
        x[i], y[i] = x[i].flip(-1), y[i].flip(-1)
    for stage in _PHOTOMETRIC:
        x = stage(x, rng, config)
    return x.clamp_(0.0, 1.0), y


def _gate(rng: np.random.Generator, p: float, b: int) -> NDArray[np.bool_] | None:
    """Which samples a stage of probability ``p`` changes; None when none. Draws nothing when p is 0 or 1."""
    if p <= 0.0:
        return None
    gate = np.ones(b, dtype=bool) if p >= 1.0 else rng.random(b) < p
    return gate if gate.any() else None


def _samples(gate: NDArray[np.bool_] | None) -> list[int]:
    return [] if gate is None else np.flatnonzero(gate).tolist()


def _uniform(rng: np.random.Generator, lo: float, hi: float, b: int, channels: int = 1) -> torch.Tensor:
    """Per-sample strengths (B, channels, 1, 1), float32."""
    return torch.from_numpy(rng.uniform(lo, hi, size=(b, channels, 1, 1)).astype(np.float32))


def _hwc(x: torch.Tensor, i: int) -> F32:
    """Sample ``i`` as an (H, W, 3) array for OpenCV (a view of ``x`` when it is channels-last)."""
    return np.ascontiguousarray(x[i].permute(1, 2, 0).numpy())


def _put_hwc(x: torch.Tensor, i: int, image: NDArray[Any]) -> None:
    x[i] = torch.from_numpy(image).permute(2, 0, 1)


# Scene style ---------------------------------------------------------------------------------------------------


def _amplitude(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Scale each channel's low-frequency Fourier amplitudes by a smooth random field, keeping the phase.

    The amplitude spectrum's low band carries an image's style (illumination, colour cast, large-scale
    contrast) and the phase its content: Fourier domain adaptation swaps that band for a target image's
    (Yang & Soatto, "FDA", CVPR 2020) and amplitude-mix augmentation interpolates it between images (Xu et al.,
    "A Fourier-based Framework for Domain Generalization", CVPR 2021). With no real images to take it from,
    this perturbs it: gain exp(s * field), the field a random 5x5 grid over the band, interpolated bilinearly,
    even in frequency so that the image stays real, and fading to 1 at the band edge. The channels' fields
    correlate (0.8), so that the change is mostly one of light and less one of colour. DC keeps gain 1, so
    each channel keeps its mean (brightness is the photometric stages' business).
    """
    gate = _gate(rng, config.amplitude_p, len(x))
    if gate is None:
        return x
    b, _, h, w = x.shape
    strength = rng.uniform(*config.amplitude_strength, size=b)
    nodes = rng.standard_normal((b, 4, _FIELD_GRID, _FIELD_GRID))
    nodes = (nodes[:, :1] + 0.5 * nodes[:, 1:]) / math.sqrt(1.25)  # (B, 3, n, n): shared, plus half as much per channel
    centre = nodes[..., _FIELD_GRID // 2, _FIELD_GRID // 2].copy()
    nodes = (nodes + nodes[..., ::-1, ::-1]) / math.sqrt(2.0)  # even: field(-f) = field(f); still unit variance
    nodes[..., _FIELD_GRID // 2, _FIELD_GRID // 2] = centre
    rows, cols, grid, window = _amplitude_band(h, w, config.amplitude_band_cyc_per_px)
    for i in _samples(gate):
        field = F.grid_sample(torch.from_numpy(nodes[i : i + 1]).float(), grid, align_corners=True)[0]  # (3, R, C)
        spectrum = torch.fft.rfft2(x[i])  # (3, H, W // 2 + 1)
        spectrum[:, rows, :cols] *= torch.exp(float(strength[i]) * field * window)
        x[i] = torch.fft.irfft2(spectrum, s=(h, w))
    return x.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _amplitude_band(h: int, w: int, band_cyc_per_px: float) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """The rows and columns of an (H, W // 2 + 1) real spectrum inside the band, the field's sampling grid there
    (1, R, C, 2) in band units, and the window (R, C): a raised cosine of the radius, 0 at DC and past the edge."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)
    rows = torch.nonzero(fy.abs() < band_cyc_per_px)[:, 0]
    cols = int((fx < band_cyc_per_px).sum())
    vv, uu = torch.meshgrid(fy[rows] / band_cyc_per_px, fx[:cols] / band_cyc_per_px, indexing="ij")  # (R, C)
    window = 0.5 * (1.0 + torch.cos(math.pi * torch.sqrt(vv**2 + uu**2).clamp(max=1.0)))
    window[0, 0] = 0.0  # DC (row 0 is frequency 0)
    grid = torch.stack([uu, vv], dim=-1)[None].float()  # grid_sample's x is the column, y the row
    return rows, cols, grid, window.float()


def _randconv(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Blend in the image filtered by a random 1x1 or kxk convolution that mixes the channels.

    After RandConv (Xu et al., "Robust and Generalizable Visual Representation Learning via Random
    Convolutions", ICLR 2021): weights N(0, 1 / (k^2 * 3)), a blend weight per sample. The filtered image is
    rescaled to each channel's mean and spread, so that it changes colours and local texture, not exposure.
    """
    gate = _gate(rng, config.randconv_p, len(x))
    if gate is None:
        return x
    b, sizes = len(x), config.randconv_kernel_sizes
    size = np.asarray(sizes)[rng.integers(len(sizes), size=b)]
    mix = rng.uniform(*config.randconv_mix, size=b)
    for i in _samples(gate):
        k = int(size[i])
        weight = rng.standard_normal((3, 3, k, k)).astype(np.float32) / math.sqrt(3 * k * k)  # (out, in, k, k)
        image = _hwc(x, i)
        filtered = _conv_channels(image, weight)
        (mean, std), (f_mean, f_std) = cv2.meanStdDev(image), cv2.meanStdDev(filtered)  # (3, 1) each
        scale = mix[i] * std[:, 0] / (f_std[:, 0] + 1e-6)
        offset = mix[i] * mean[:, 0] - scale * f_mean[:, 0]
        rescaled = cv2.transform(filtered, np.concatenate([np.diag(scale), offset[:, None]], axis=1))
        _put_hwc(x, i, cv2.addWeighted(image, 1.0 - mix[i], rescaled, 1.0, 0.0))
    return x.clamp_(0.0, 1.0)


def _conv_channels(image: F32, weight: F32) -> NDArray[Any]:
    """(H, W, 3) through a (3, 3, k, k) convolution (out, in, rows, columns), reflecting at the borders."""
    if weight.shape[-1] == 1:
        return cv2.transform(image, weight[:, :, 0, 0])
    planes = cv2.split(image)
    out = [np.zeros(image.shape[:2], dtype=np.float32) for _ in range(3)]
    for c, j in itertools.product(range(3), range(3)):
        out[c] += cv2.filter2D(planes[j], -1, weight[c, j], borderType=cv2.BORDER_REFLECT_101)
    return cv2.merge(out)


# Lens ----------------------------------------------------------------------------------------------------------


def _chromatic_aberration(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Lateral chromatic aberration: red and blue magnified about the image centre in opposite directions."""
    gate = _gate(rng, config.chromatic_aberration_p, len(x))
    if gate is None:
        return x
    b, _, h, w = x.shape
    scale = rng.uniform(*config.chromatic_aberration_scale, size=b) * rng.choice([-1.0, 1.0], size=b)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    for i in _samples(gate):
        for channel, magnification in ((0, 1.0 + scale[i]), (2, 1.0 - scale[i])):
            k = 1.0 / magnification  # output pixel p shows the input at c + (p - c) / magnification
            src_from_dst = np.array([[k, 0.0, cx * (1.0 - k)], [0.0, k, cy * (1.0 - k)]])
            plane = np.ascontiguousarray(x[i, channel].numpy())
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            x[i, channel] = torch.from_numpy(
                cv2.warpAffine(plane, src_from_dst, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT_101)
            )
    return x


def _blur(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Gaussian blur: defocus, and the softness of real lenses that renders lack."""
    gate = _gate(rng, config.blur_p, len(x))
    if gate is None:
        return x
    sigma = rng.uniform(*config.blur_sigma_px, size=len(x))
    for i in _samples(gate):
        if sigma[i] > 0.05:  # below that OpenCV's kernel is the identity
            _put_hwc(x, i, cv2.GaussianBlur(_hwc(x, i), (0, 0), float(sigma[i]), borderType=cv2.BORDER_REFLECT_101))
    return x


def _motion_blur(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Blur along a line of random length and direction: motion during the exposure."""
    gate = _gate(rng, config.motion_blur_p, len(x))
    if gate is None:
        return x
    b = len(x)
    length, angle = rng.uniform(*config.motion_blur_length_px, size=b), rng.uniform(0.0, math.pi, size=b)
    for i in _samples(gate):
        kernel = line_kernel(float(length[i]), float(angle[i]))
        _put_hwc(x, i, cv2.filter2D(_hwc(x, i), -1, kernel, borderType=cv2.BORDER_REFLECT_101))
    return x


def line_kernel(length_px: float, angle_rad: float) -> F32:
    """A normalised (k, k) kernel: the image of a point that moved ``length_px`` through the centre at ``angle_rad``
    during the exposure, spread bilinearly over the pixels it crossed."""
    half = length_px / 2.0
    r = max(1, math.ceil(half))
    n = max(2, math.ceil(8 * length_px))
    t = -half + (np.arange(n) + 0.5) * (length_px / n)  # midpoints of n equal pieces of the path
    px, py = r + t * math.cos(angle_rad), r + t * math.sin(angle_rad)
    kernel = np.zeros((2 * r + 1, 2 * r + 1))
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight)  # bilinear splat of each point on the segment
    return (kernel / kernel.sum()).astype(np.float32)


def _vignetting(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Radial darkening by the cos^4 law, (1 + a r^2)^-2, with ``a`` set by the darkening at the corners.

    The falloff's centre moves at random: a crop rarely sits on the optical axis of its camera.
    """
    gate = _gate(rng, config.vignetting_p, len(x))
    if gate is None:
        return x
    b, _, h, w = x.shape
    darkening = rng.uniform(*config.vignetting_strength, size=b)
    shift = rng.uniform(-1.0, 1.0, size=(b, 2)) * config.vignetting_centre_jitter * np.array([w / 2.0, h / 2.0])
    a = 1.0 / np.sqrt(1.0 - darkening) - 1.0  # (1 + a)^-2 = 1 - darkening at a centred falloff's corners
    cols, rows = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    for i in _samples(gate):
        cx, cy = (w - 1) / 2.0 + float(shift[i, 0]), (h - 1) / 2.0 + float(shift[i, 1])
        r2 = (cols[None, :] - cx) ** 2 + (rows[:, None] - cy) ** 2  # (H, W)
        q = 1.0 + float(a[i] / ((w / 2.0) ** 2 + (h / 2.0) ** 2)) * r2
        falloff = 1.0 / (q * q)
        _put_hwc(x, i, cv2.multiply(_hwc(x, i), cv2.merge([falloff] * 3)))
    return x


# Sensor and processing -----------------------------------------------------------------------------------------


def _contrast(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    gate = _gate(rng, config.contrast_p, len(x))
    if gate is None:
        return x
    factor = _uniform(rng, *config.contrast, len(x))
    factor[~gate] = 1.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return x.sub_(mean).mul_(factor).add_(mean)


def _brightness(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    gate = _gate(rng, config.brightness_p, len(x))
    if gate is None:
        return x
    factor = _uniform(rng, *config.brightness, len(x))
    factor[~gate] = 1.0
    return x.mul_(factor)


def _colour(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Channel gain, white balance, hue, then saturation: one 3x3 matrix per sample, applied in one pass.

    A diagonal matrix multiplies each value once, as an elementwise product would (channel gain alone, as in
    ``legacy()``, gives the same floats as ``x * gain``).
    """
    b = len(x)
    matrix = np.tile(np.eye(3), (b, 1, 1))  # (B, 3, 3), output from input colour
    changed = np.zeros(b, dtype=bool)
    if (gate := _gate(rng, config.channel_gain_p, b)) is not None:
        gains = _uniform(rng, *config.channel_gain, b, channels=3).numpy()[:, :, 0, 0].astype(np.float64)  # (B, 3)
        matrix[gate] = gains[gate, :, None] * matrix[gate]
        changed |= gate
    if (gate := _gate(rng, config.white_balance_p, b)) is not None:
        t = rng.uniform(-config.white_balance_temperature, config.white_balance_temperature, size=b)
        u = rng.uniform(-config.white_balance_tint, config.white_balance_tint, size=b)
        gains = np.stack([1.0 + t, 1.0 + u, 1.0 - t], axis=-1)  # (B, 3)
        matrix[gate] = gains[gate, :, None] * matrix[gate]
        changed |= gate
    if (gate := _gate(rng, config.hue_p, b)) is not None:
        turns = rng.uniform(-config.hue_turns, config.hue_turns, size=b)
        matrix[gate] = hue_rotation(2.0 * math.pi * turns[gate]) @ matrix[gate]
        changed |= gate
    if (gate := _gate(rng, config.saturation_p, b)) is not None:
        s = rng.uniform(*config.saturation, size=b)[gate, None, None]
        matrix[gate] = (s * np.eye(3) + (1.0 - s) * _LUMA_RGB[None, None, :]) @ matrix[gate]  # luma + s (x - luma)
        changed |= gate
    for i in _samples(changed):
        _put_hwc(x, i, cv2.transform(_hwc(x, i), matrix[i]))
    return x


def hue_rotation(angle_rad: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N, 3, 3) rotations of RGB about the grey axis by ``angle_rad`` (N,): a hue shift that keeps greys and R + G + B."""
    c, s = np.cos(angle_rad)[:, None, None], np.sin(angle_rad)[:, None, None]
    cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)  # [u]x, u = grey / |grey|
    return c * np.eye(3) + (1.0 - c) * np.full((3, 3), 1.0 / 3.0) + s * cross  # Rodrigues' formula


def _gamma(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    gate = _gate(rng, config.gamma_p, len(x))
    if gate is None:
        return x
    exponent = _uniform(rng, *config.gamma, len(x))
    x.clamp_(0.0, 1.0)
    for i in _samples(gate):
        x[i].pow_(exponent[i])
    return x


def _noise(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Gaussian noise of variance sigma^2 + shot^2 * x: read noise plus the Gaussian approximation of photon
    shot noise (Foi et al., "Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data",
    IEEE TIP 2008)."""
    gate = _gate(rng, config.noise_p, len(x))
    if gate is None:
        return x
    b, c, h, w = x.shape
    banked = config.noise_bank and 2 * c * h * w <= _BANK_SIZE
    fresh = None if banked else torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))  # (B, 3, H, W)
    offsets = rng.integers(0, _BANK_SIZE - c * h * w + 1, size=b) if banked else np.zeros(b, dtype=np.int64)
    read = _uniform(rng, *config.noise_sigma, b)
    shot = _uniform(rng, *config.noise_shot_sigma, b) if config.noise_shot_sigma[1] > 0.0 else None
    for i in _samples(gate):
        normal = _bank_window(int(offsets[i]), (h, w)) if fresh is None else fresh[i]  # (3, H, W)
        if shot is None:
            x[i] += normal * read[i]
        else:  # one temporary: std, then the noise itself
            x[i] += x[i].clamp(min=0.0).mul_(shot[i] ** 2).add_(read[i] ** 2).sqrt_().mul_(normal)
    return x


def _bank_window(offset: int, size_hw: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) standard normals, channels-last: a window of the bank.

    Fresh normals for a batch of 8 crops of 256x192 take 11 ms, more than the rest of the pipeline; a window of
    16 MiB of them at one of 4 million offsets costs nothing. Images too large for the bank use fresh ones.
    """
    h, w = size_hw
    return _normal_bank()[offset : offset + 3 * h * w].view(h, w, 3).permute(2, 0, 1)


@functools.cache
def _normal_bank() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(_BANK_SEED).standard_normal(_BANK_SIZE, dtype=np.float32))


def _jpeg(x: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """JPEG re-compression at a random quality: the block and ringing artefacts of compressed camera streams."""
    gate = _gate(rng, config.jpeg_p, len(x))
    if gate is None:
        return x
    lo, hi = config.jpeg_quality
    quality = rng.integers(lo, hi + 1, size=len(x))
    for i in _samples(gate):
        rgb = np.clip(np.rint(_hwc(x, i) * 255.0), 0.0, 255.0).astype(np.uint8)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality[i])])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise RuntimeError("JPEG re-compression failed")
        _put_hwc(x, i, cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
    return x


_PHOTOMETRIC = (
    _amplitude,
    _randconv,
    _chromatic_aberration,
    _blur,
    _motion_blur,
    _vignetting,
    _contrast,
    _brightness,
    _colour,
    _gamma,
    _noise,
    _jpeg,
)
