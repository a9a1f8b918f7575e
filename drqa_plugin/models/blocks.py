"""ResNet-50 building blocks with torchvision-compatible parameter names.

The names (``conv1``, ``bn1``, ..., ``downsample.0``/``downsample.1``) match
torchvision so ImageNet ResNet-50 weights and the published CKDN checkpoints
load without renaming inside a block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: saves an allocation per block (BN/conv backward do not need `out`)
        return self.relu(out)


def resnet_stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage of ``blocks`` bottlenecks; the first one changes shape."""
    layers = [Bottleneck(in_channels, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class BlurDownsample(nn.Module):
    """Low-pass then subsample by 2: a fixed 3x3 binomial filter per channel, reflect padding.

    The anti-aliased downsampling of shift-tolerant networks (Zhang, ICML 2019): blurring
    before striding keeps features stable under one-pixel shifts. The filter is a buffer,
    so pretrained filters load with the weights.
    """

    filt: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16.0
        self.register_buffer("filt", kernel.expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return torch.nn.functional.conv2d(x, self.filt.to(x.dtype), stride=2, groups=self.channels)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a conv into that conv.

    Works in place on :class:`Bottleneck` blocks (the only place CKDN has BN) and
    returns ``module``; folding twice is harmless. The folded network computes the same function with fewer
    memory passes; it must only be used for inference.
    """
    for block in module.modules():
        if not isinstance(block, Bottleneck):
            continue
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            conv, bn = getattr(block, conv_name), getattr(block, bn_name)
            assert isinstance(conv, nn.Conv2d)
            if isinstance(bn, nn.BatchNorm2d):  # already folded blocks are left alone
                setattr(block, conv_name, _fused_conv(conv, bn))
                setattr(block, bn_name, nn.Identity())
        if block.downsample is not None and isinstance(block.downsample[1], nn.BatchNorm2d):
            conv, bn = block.downsample[0], block.downsample[1]
            assert isinstance(conv, nn.Conv2d)
            block.downsample = nn.Sequential(_fused_conv(conv, bn), nn.Identity())
    return module


@torch.no_grad()
def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.weight / torch.sqrt(var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]  # a 2-tuple for Conv2d
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    assert fused.bias is not None
    fused.bias.copy_(bn.bias + (conv_bias - mean) * scale)
    return fused


def _mkldnn_pointwise_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedBottleneck(nn.Module):
    """CPU inference-only bottleneck: ReLU and the residual add run inside oneDNN convolutions.

    Built from a BN-folded :class:`Bottleneck`; it keeps the same convolution
    modules (so casting and state dicts work as before) but saves the separate
    memory passes of every ReLU and residual add, which on a 2-core CPU cost
    about a tenth of a CKDN forward. No autograd support: scoring only.
    """

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        if not isinstance(block.bn1, nn.Identity):
            raise ValueError("fold BatchNorm (fold_batchnorm) before fusing a bottleneck")
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3
        self.downsample = block.downsample

    @staticmethod
    def _conv(x: Tensor, conv: nn.Conv2d, unary: str) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), [1, 1], 1, unary, [], ""
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self._conv(x, self.downsample[0], "none")  # type: ignore[arg-type]
        out = self._conv(self._conv(x, self.conv1, "relu"), self.conv2, "relu")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            out, identity, self.conv3.weight, self.conv3.bias, [0, 0], [1, 1], [1, 1], 1, "add", None, "relu", [], ""
        )


def fuse_bottlenecks_for_cpu(module: nn.Module) -> nn.Module:
    """Swap every folded :class:`Bottleneck` for a :class:`FusedBottleneck` where oneDNN allows it.

    Returns ``module`` unchanged when this PyTorch build lacks the fused oneDNN ops.
    """
    if not _mkldnn_pointwise_available():
        return module
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, Bottleneck):
                setattr(parent, name, FusedBottleneck(child))
    return module
