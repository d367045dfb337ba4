"""ENet: a real-time encoder-decoder for semantic segmentation (Paszke et al., 2016, arXiv:1606.02147).

Read top to bottom: the blocks, the network, its channel table and the public builder ``enet``, and
``fold_batch_norms`` for inference. The layout follows the paper's Table 1: an initial block that downsamples at once
(a 3x3 stride-2 convolution), stage 1 (one downsampling and four regular bottlenecks),
stages 2 and 3 (regular, dilated and asymmetric 5x1 / 1x5 bottlenecks at 1/8 resolution), a small
decoder (stages 4 and 5) and a transposed-convolution classifier at full resolution.

Departures from the paper, each so that structured channel pruning (Torch-Pruning) and ONNX export
see a plain graph:
- The initial block is the 3x3 stride-2 convolution alone, without the paper's max-pooled input
  concatenated beside it: the 3 pooled channels cannot be pruned, and so they kept the whole
  half-resolution trunk (stage 5 and the classifier, a third of the CPU time) at full width after pruning.
- Downsampling bottlenecks project their max-pooled shortcut with a 1x1 convolution instead of
  zero-padding its channels (zero-padding ties channel indices in a way a dependency graph cannot prune).
- Upsampling bottlenecks upsample their shortcut bilinearly instead of max-unpooling with the
  encoder's pooling indices; the lost localisation comes back through additive skips from the
  encoder (stage 1 into stage 4, the initial block into stage 5), as in LinkNet (Chaurasia and
  Culurciello, 2017). Thin classes (lane markings) need those full-resolution cues.
- ReLU by default (PReLU is an option): ONNX Runtime fuses Conv+ReLU; the paper's PReLU costs latency.
- No input normalisation: the initial block's batch norm follows its convolution at once.

Every channel count is explicit: ``default_channels(width)`` gives the table for a width multiplier
and ``ENet.channel_spec()`` reads it back from a (possibly pruned) network, so that ``enet(channels=...)``
rebuilds a pruned architecture from a JSON-able table and loads its state dict without pickles.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

Activation = Literal["relu", "prelu"]
BlockKind = Literal["regular", "dilated", "asymmetric"]


def _act(kind: Activation, channels: int) -> nn.Module:
    return nn.PReLU(channels) if kind == "prelu" else nn.ReLU(inplace=True)


class ConvBN(nn.Module):
    """A bias-free convolution (or transposed convolution) and its batch norm, optionally activated."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, act: Activation | None) -> None:
        super().__init__()
        self.conv = conv
        self.bn: nn.Module = nn.BatchNorm2d(conv.out_channels)  # nn.Identity once folded
        self.act = _act(act, conv.out_channels) if act is not None else nn.Identity()

    @property
    def out_channels(self) -> int:
        return int(self.conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _conv(c_in: int, c_out: int, kernel: int | tuple[int, int], **kw: int | tuple[int, int]) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, bias=False, **kw)  # type: ignore[arg-type]


class InitialBlock(ConvBN):
    """Early downsampling: a 3x3 stride-2 convolution, its batch norm and activation (paper, Fig. 2a,
    without the max-pooled input beside it; see the module notes)."""

    def __init__(self, in_channels: int, channels: int, act: Activation) -> None:
        super().__init__(_conv(in_channels, channels, 3, stride=2, padding=1), act)


class Bottleneck(nn.Module):
    """A residual bottleneck that keeps size and channels (paper, Fig. 2b).

    Extension branch: 1x1 reduce -> main convolution -> 1x1 expand -> spatial dropout. The main
    convolution is a 3x3 (``regular``), a dilated 3x3 (``dilated``), or a 5x1 followed by a 1x5
    (``asymmetric``), so ``internal`` holds two channel counts ([reduce, main]) or three ([reduce, mid, main]).
    """

    def __init__(
        self, channels: int, internal: Sequence[int], *, kind: BlockKind, dilation: int, dropout: float, act: Activation
    ) -> None:
        super().__init__()
        expected = 3 if kind == "asymmetric" else 2
        if len(internal) != expected:
            raise ValueError(f"a {kind} bottleneck takes {expected} internal channel counts, got {list(internal)}")
        reduce_ch, main_ch = internal[0], internal[-1]
        self.reduce = ConvBN(_conv(channels, reduce_ch, 1), act)
        # The 5x1 and the 1x5 of an asymmetric block act as one 5x5 (paper, sec. 3): no norm between them.
        self.mid = _conv(reduce_ch, internal[1], (5, 1), padding=(2, 0)) if kind == "asymmetric" else None
        if self.mid is not None:
            main = _conv(internal[1], main_ch, (1, 5), padding=(0, 2))
        else:
            main = _conv(reduce_ch, main_ch, 3, padding=dilation, dilation=dilation)
        self.main = ConvBN(main, act)
        self.expand = ConvBN(_conv(main_ch, channels, 1), None)
        self.dropout = nn.Dropout2d(dropout)
        self.act = _act(act, channels)

    def internal_channels(self) -> list[int]:
        mid = [int(self.mid.out_channels)] if self.mid is not None else []
        return [self.reduce.out_channels, *mid, self.main.out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = self.reduce(x)  # (N, reduce, H, W)
        if self.mid is not None:
            ext = self.mid(ext)  # (N, mid, H, W)
        ext = self.dropout(self.expand(self.main(ext)))  # (N, C, H, W)
        return self.act(x + ext)


class DownBottleneck(nn.Module):
    """Halves the size and changes the channel count (paper, Fig. 2b with max pooling).

    Extension: 2x2 stride-2 reduce -> 3x3 -> 1x1 expand; shortcut: 2x2 max pool -> 1x1 projection.
    """

    def __init__(self, in_channels: int, out_channels: int, internal: Sequence[int], *, dropout: float, act: Activation) -> None:
        super().__init__()
        reduce_ch, main_ch = internal
        self.reduce = ConvBN(_conv(in_channels, reduce_ch, 2, stride=2), act)
        self.main = ConvBN(_conv(reduce_ch, main_ch, 3, padding=1), act)
        self.expand = ConvBN(_conv(main_ch, out_channels, 1), None)
        self.dropout = nn.Dropout2d(dropout)
        self.pool = nn.MaxPool2d(2)
        self.project = ConvBN(_conv(in_channels, out_channels, 1), None)
        self.act = _act(act, out_channels)

    def internal_channels(self) -> list[int]:
        return [self.reduce.out_channels, self.main.out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = self.dropout(self.expand(self.main(self.reduce(x))))  # (N, out, H/2, W/2)
        shortcut = self.project(self.pool(x))  # (N, out, H/2, W/2)
        return self.act(shortcut + ext)


class UpBottleneck(nn.Module):
    """Doubles the size and changes the channel count (the decoder's bottleneck).

    Extension: 1x1 reduce -> 3x3 stride-2 transposed convolution -> 1x1 expand; shortcut: 1x1
    projection -> bilinear x2 upsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, internal: Sequence[int], *, act: Activation) -> None:
        super().__init__()
        reduce_ch, main_ch = internal
        self.reduce = ConvBN(_conv(in_channels, reduce_ch, 1), act)
        upconv = nn.ConvTranspose2d(reduce_ch, main_ch, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.main = ConvBN(upconv, act)
        self.expand = ConvBN(_conv(main_ch, out_channels, 1), None)
        self.project = ConvBN(_conv(in_channels, out_channels, 1), None)
        self.act = _act(act, out_channels)

    def internal_channels(self) -> list[int]:
        return [self.reduce.out_channels, self.main.out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = self.expand(self.main(self.reduce(x)))  # (N, out, 2H, 2W)
        shortcut = F.interpolate(self.project(x), scale_factor=2.0, mode="bilinear", align_corners=False)  # (N, out, 2H, 2W)
        return self.act(shortcut + ext)


# (name, kind, dilation) of the bottlenecks of stages 2 and 3 after 2.0 (paper, Table 1).
_STAGE23: tuple[tuple[str, BlockKind, int], ...] = (
    ("1", "regular", 1),
    ("2", "dilated", 2),
    ("3", "asymmetric", 1),
    ("4", "dilated", 4),
    ("5", "regular", 1),
    ("6", "dilated", 8),
    ("7", "asymmetric", 1),
    ("8", "dilated", 16),
)


class ENet(nn.Module):
    """Images (N, in_channels, H, W) in [0, 1], H and W multiples of 8, to logits (N, num_classes, H, W).

    With ``folded`` > 0 the classifier has that many more channels, classes learnt in training only (the
    vehicle's own body: ``bev train --body separate``); ``forward`` folds them into background (channel 0)
    by a maximum, so the argmax over its ``num_classes`` outputs is the argmax over all of the classifier's
    channels with those classes called background. ``head_logits`` gives every channel, for the loss.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        channels: Mapping[str, int | list[int]],
        dropout: float,
        act: Activation,
        folded: int = 0,
    ) -> None:
        super().__init__()
        c = dict(channels)

        def count(name: str) -> int:
            value = c[name]
            return int(value) if isinstance(value, int) else int(value[0])

        def inner(name: str) -> list[int]:
            value = c[name]
            return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]

        trunk0 = count("initial")  # stage 5 adds onto the initial block's output
        trunk1, trunk2 = count("stage1"), count("stage2")  # stage 4 adds onto stage 1's output

        def regular(name: str, width: int, p: float, kind: BlockKind = "regular", dilation: int = 1) -> Bottleneck:
            return Bottleneck(width, inner(name), kind=kind, dilation=dilation, dropout=p, act=act)

        self.num_classes = num_classes
        self.folded = folded
        self.in_channels = in_channels
        self.initial = InitialBlock(in_channels, count("initial"), act)
        early_p = dropout / 10  # the paper's 0.01 in stage 1 against 0.1 later
        self.stage1 = nn.Sequential(
            DownBottleneck(trunk0, trunk1, inner("stage1.0"), dropout=early_p, act=act),
            *(regular(f"stage1.{i}", trunk1, early_p) for i in range(1, 5)),
        )
        self.stage2 = nn.Sequential(
            DownBottleneck(trunk1, trunk2, inner("stage2.0"), dropout=dropout, act=act),
            *(regular(f"stage2.{n}", trunk2, dropout, kind, d) for n, kind, d in _STAGE23),
        )
        self.stage3 = nn.Sequential(*(regular(f"stage3.{n}", trunk2, dropout, kind, d) for n, kind, d in _STAGE23))
        self.up4 = UpBottleneck(trunk2, trunk1, inner("stage4.0"), act=act)
        self.stage4 = nn.Sequential(*(regular(f"stage4.{i}", trunk1, 0.0) for i in (1, 2)))
        self.up5 = UpBottleneck(trunk1, trunk0, inner("stage5.0"), act=act)
        self.stage5 = nn.Sequential(regular("stage5.1", trunk0, 0.0))
        self.head = nn.ConvTranspose2d(trunk0, num_classes + folded, 2, stride=2)

    def channel_spec(self) -> dict[str, int | list[int]]:
        """The channel table that rebuilds this (possibly pruned) network through ``enet(channels=...)``."""
        spec: dict[str, int | list[int]] = {
            "initial": int(self.initial.conv.out_channels),
            "stage1": self.up4.expand.out_channels,
            "stage2": self.up4.reduce.conv.in_channels,
        }
        # Block names follow the paper's numbering: stage 3 has no x.0, stages 4 and 5 start with up4 / up5.
        stages = [("stage1", self.stage1, 0), ("stage2", self.stage2, 0), ("stage3", self.stage3, 1)]
        stages += [("stage4", self.stage4, 1), ("stage5", self.stage5, 1)]
        for stage, seq, first in stages:
            for i, block in enumerate(seq, start=first):
                assert isinstance(block, Bottleneck | DownBottleneck)
                spec[f"{stage}.{i}"] = block.internal_channels()
        spec["stage4.0"] = self.up4.internal_channels()
        spec["stage5.0"] = self.up5.internal_channels()
        return spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold_into_background(self.head_logits(x), self.num_classes)

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits (N, num_classes + folded, H, W), before the training-only classes fold."""
        x0 = self.initial(x)  # (N, trunk0, H/2, W/2)
        x1 = self.stage1(x0)  # (N, trunk1, H/4, W/4)
        x = self.stage3(self.stage2(x1))  # (N, trunk2, H/8, W/8)
        x = self.stage4(self.up4(x) + x1)  # (N, trunk1, H/4, W/4)
        x = self.stage5(self.up5(x) + x0)  # (N, trunk0, H/2, W/2)
        return self.head(x)


def fold_into_background(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``logits`` (N, C, H, W) with channels ``num_classes`` and beyond folded into channel 0 by a maximum."""
    if logits.shape[1] == num_classes:
        return logits
    background = torch.maximum(logits[:, :1], logits[:, num_classes:].amax(dim=1, keepdim=True))
    return torch.cat([background, logits[:, 1:num_classes]], dim=1)


def _scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8 (at least 8) for SIMD-friendly kernels."""
    return max(8, round(channels * width / 8) * 8)


def default_channels(width: float = 1.0, in_channels: int = 3) -> dict[str, int | list[int]]:
    """The paper's channel table (16 / 64 / 128, bottleneck ratio 4) scaled by ``width``."""
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    t0, t1, t2 = _scaled(16, width), _scaled(64, width), _scaled(128, width)
    i1, i2 = _scaled(16, width), _scaled(32, width)
    spec: dict[str, int | list[int]] = {"initial": t0, "stage1": t1, "stage2": t2}
    spec["stage1.0"] = [i1, i1]
    spec.update({f"stage1.{i}": [i1, i1] for i in range(1, 5)})
    spec["stage2.0"] = [i2, i2]
    for stage in ("stage2", "stage3"):
        spec.update({f"{stage}.{n}": [i2, i2, i2] if kind == "asymmetric" else [i2, i2] for n, kind, _ in _STAGE23})
    spec.update({"stage4.0": [i1, i1], "stage4.1": [i1, i1], "stage4.2": [i1, i1]})
    i5 = _scaled(4, width)
    spec.update({"stage5.0": [i5, i5], "stage5.1": [i5, i5]})
    return spec


def _check_channels(channels: Mapping[str, int | list[int]], expected: Mapping[str, int | list[int]]) -> None:
    missing = sorted(set(expected) - set(channels))
    extra = sorted(set(channels) - set(expected))
    if missing or extra:
        raise ValueError(f"channel table does not fit ENet: missing {missing}, unexpected {extra}")
    for key, value in channels.items():
        shape = expected[key]
        counts = [value] if isinstance(value, int) else list(value)
        if len(counts) != (1 if isinstance(shape, int) else len(shape)) or any(int(v) < 1 for v in counts):
            raise ValueError(f"channel table entry {key!r}: expected {shape!r}-like positive counts, got {value!r}")


def enet(
    *,
    num_classes: int,
    width: float = 1.0,
    in_channels: int = 3,
    dropout: float = 0.1,
    activation: Activation = "relu",
    channels: Mapping[str, int | list[int]] | None = None,
    folded: int = 0,
) -> ENet:
    """Builds an ENet.

    ``width`` scales every channel count (rounded to multiples of 8); ``channels`` replaces the
    whole table (as ``ENet.channel_spec()`` returns it, for pruned networks); ``folded``: classifier
    channels of training-only classes that fold into background (``ENet``).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if folded < 0:
        raise ValueError(f"folded must be at least 0, got {folded}")
    if activation not in ("relu", "prelu"):
        raise ValueError(f"activation must be 'relu' or 'prelu', got {activation!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    table = default_channels(width, in_channels)
    if channels is not None:
        _check_channels(channels, table)
        table = dict(channels)
    return ENet(num_classes=num_classes, in_channels=in_channels, channels=table, dropout=dropout, act=activation, folded=folded)


def network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3), as cameras and files give them, to the network's float (N, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255.0


def on_device(model: ENet, device: torch.device | str | None = None, *, channels_last: bool = True) -> ENet:
    """``model`` moved to ``device`` (in place) with its weights channels-last (NHWC) or back to contiguous NCHW.

    Channels-last is oneDNN's native layout (and cuDNN's for bfloat16): a convolution whose input or weight is
    channels-last runs in it. Training keeps both so; files and the ONNX export take contiguous weights.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=layout)  # type: ignore[call-overload]


@torch.no_grad()
def fold_batch_norms(model: ENet) -> ENet:
    """An inference copy of ``model`` (eval mode) with each convolution's batch norm folded into the
    convolution's weights and a bias: the same function with a third fewer operators, which is most
    of PyTorch eager's per-layer overhead on a CPU. Runtime only: its state dict no longer fits
    ``enet(...)`` (the initial block's norm, after a concatenation, stays)."""
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if not isinstance(block, ConvBN) or not isinstance(block.bn, nn.BatchNorm2d):
            continue
        conv, bn = block.conv, block.bn
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
        shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(shape))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        block.bn = nn.Identity()
    return folded
