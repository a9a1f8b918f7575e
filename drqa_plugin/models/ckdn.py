"""CKDN: conditional knowledge distillation for degraded-reference IQA.

Zheng et al., ICCV 2021 (arXiv 2108.07948). Written from the paper and the
facts of its MIT-licensed official code (researchmm/CKDN); the state-dict names
are our own and :mod:`drqa_plugin.convert` maps the published layouts onto them.

Layout (all blocks are ResNet-50 pieces):

* ``restored_encoder``  -- 7x7/2 stem (no BN, no ReLU), max-pool, ResNet layer1
* ``reference_encoder`` -- same structure, own weights (degraded *and* pristine refs)
* ``comparator`` + ``head``       -- ResNet layer2 + MLP, shared by student and teacher
* ``nr_comparator`` + ``nr_head`` -- auxiliary no-reference ranking branch

Variant ``ckdn_r50_ctx`` (ours, not in the paper) also hands the head the input's context: the
restored encoder's pooled features of the degraded input. Distillation pulls the reference
encoder's features of a degraded input toward those of its pristine image, so they are meant to
lose how degraded the input was; the context keeps that, so the head can learn that a method's
worth depends on its input (GAN texture over a clean input vs over a noisy one).

Variant ``ckdn_r50_detail`` (ours, not in the paper) adds a full-resolution detail branch: two 3x3
convolutions over the restored image, its reference and their difference, pooled to their mean and
RMS, beside the comparator's features in the head. It tests whether the stem, which downsamples by
4 before restored and reference meet, hides how much a denoiser smoothed or an interpolation
sharpened. Measured: it does not; the variant scores like ``ckdn_r50`` (docs/quality.md, "The fit").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from drqa_plugin.constants import DEFAULT_ARCH
from drqa_plugin.models.blocks import (
    BlurDownsample,
    fold_batchnorm,
    fuse_bottlenecks_for_cpu,
    resnet_stage,
)
from drqa_plugin.pretrained import PretrainedConfig
from drqa_plugin.registry import ModelVariant, register_variant

#: What a training pass can compute: student, teacher, no-reference ranking, feature gap, the
#: student's score of the second restoration (same degraded reference) and of the restoration
#: against another sample's degraded reference (``drx``: the batch's references rolled by one).
TRAIN_PATHS = ("dr", "fr", "nr", "gap", "dr2", "drx")

# The convolutional part that may run in bf16/fp16; the MLP heads (0.5 % of the
# FLOPs, and where the score is formed) always stay fp32.
TRUNK_MODULES = ("restored_encoder", "reference_encoder", "comparator", "detail")


@dataclass(frozen=True)
class CKDNConfig:
    """Architecture hyper-parameters; the defaults are the published network."""

    stem_channels: int = 64
    encoder_blocks: int = 3  # ResNet-50 layer1
    # "resnet": the paper's encoders; "alex": the first two conv layers of a shift-tolerant
    # AlexNet (what ST-LPIPS computes its features with), so they can start from its weights.
    encoder: str = "resnet"
    comparator_blocks: int = 4  # ResNet-50 layer2
    head_hidden: int = 2048
    head_dropout: float = 0.5
    # The score head also sees the input's context (see the module docstring); False = the paper's head.
    input_context: bool = False
    # Channels of the full-resolution detail branch (module docstring); 0 = none, the paper's network.
    detail_channels: int = 0


class TrainOutputs(NamedTuple):
    """Everything the distillation losses need from one training forward pass.

    ``dr``/``fr``/``nr`` are sigmoid scores of shape (N,); ``feature_gap`` is the
    per-sample mean squared difference between the degraded and pristine
    reference features, shape (N,); ``dr_2`` is the student's score of
    ``restored_2`` against the same degraded reference (path ``dr2``); ``dr_x`` the
    student's score of ``restored`` against the next sample's degraded reference
    (path ``drx``, the batch rolled by one). Paths that were not asked for are ``None``.
    """

    dr: Tensor | None
    fr: Tensor | None
    nr: Tensor | None
    feature_gap: Tensor | None
    dr_2: Tensor | None = None
    dr_x: Tensor | None = None


class Encoder(nn.Module):
    """Stem conv (deliberately without BN/ReLU, as in CKDN) + max-pool + ResNet layer1."""

    def __init__(self, cfg: CKDNConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, cfg.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.blocks = resnet_stage(cfg.stem_channels, 64, cfg.encoder_blocks, stride=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pool(self.stem(x)))


class AlexEncoder(nn.Module):
    """Shift-tolerant AlexNet conv1..conv2 (11x11/1, blur-down, ReLU, max 3/1, blur-down, 5x5, ReLU),
    then a 1x1 projection to the 256 channels at 1/4 resolution that the comparator takes.

    Layer shapes follow the ST-LPIPS AlexNet, so ``model.init: stlpips_alex`` can load its
    conv and filter weights (:func:`drqa_plugin.convert.init_from_stlpips_alex`).
    """

    def __init__(self, cfg: CKDNConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=11, padding=5)
        self.down1 = BlurDownsample(64)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.down2 = BlurDownsample(64)
        self.conv2 = nn.Conv2d(64, 192, kernel_size=5, padding=2)
        self.project = nn.Conv2d(192, 256, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down2(self.pool(self.relu(self.down1(self.conv1(x)))))
        return self.project(self.relu(self.conv2(x)))


ENCODERS = {"resnet": Encoder, "alex": AlexEncoder}


class DetailBranch(nn.Module):
    """Two 3x3 convolutions at full resolution over [restored, reference, restored - reference],
    pooled to per-channel mean and RMS: (N, 2 * channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(9, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, restored: Tensor, reference: Tensor) -> Tensor:
        x = torch.cat([restored, reference, restored - reference], dim=1)
        x = self.relu(self.conv2(self.relu(self.conv1(x)))).float()
        # RMS carries the energy of the responses (what gradient-energy sharpness measures), mean their level.
        return torch.cat([x.mean(dim=(2, 3)), x.pow(2).mean(dim=(2, 3)).add(1e-8).sqrt()], dim=1)


#: Channels of the comparator output and of an encoder output (the context).
COMPARATOR_CHANNELS = 512
ENCODER_CHANNELS = 256


def _score_head(cfg: CKDNConfig, in_features: int = COMPARATOR_CHANNELS) -> nn.Sequential:
    # Indices 0/3/6 hold the Linear layers, matching the published checkpoints.
    return nn.Sequential(
        nn.Linear(in_features, cfg.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(cfg.head_dropout),
        nn.Linear(cfg.head_hidden, cfg.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(cfg.head_dropout),
        nn.Linear(cfg.head_hidden, 1),
    )


class CKDN(nn.Module):
    """The CKDN network.

    ``model(restored, degraded)`` is the degraded-reference score in (0, 1), shape (N,),
    higher is better. ``model(restored, degraded, restored_2, pristine)`` is the
    training pass and returns :class:`TrainOutputs`. Inputs are ImageNet-normalised
    RGB tensors of equal size.
    """

    arch_name = DEFAULT_ARCH

    def __init__(self, cfg: CKDNConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CKDNConfig()
        if self.cfg.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.cfg.encoder!r}; choose from {', '.join(ENCODERS)}")
        self.restored_encoder = ENCODERS[self.cfg.encoder](self.cfg)
        self.reference_encoder = ENCODERS[self.cfg.encoder](self.cfg)
        self.comparator = resnet_stage(256, 128, self.cfg.comparator_blocks, stride=2)
        context = ENCODER_CHANNELS if self.cfg.input_context else 0
        self.detail = DetailBranch(self.cfg.detail_channels) if self.cfg.detail_channels else None
        self.head = _score_head(self.cfg, COMPARATOR_CHANNELS + context + 2 * self.cfg.detail_channels)
        self.nr_comparator = resnet_stage(256, 128, self.cfg.comparator_blocks, stride=2)
        self.nr_head = _score_head(self.cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _pool_score(features: Tensor, head: nn.Sequential, extras: Tensor | None = None) -> Tensor:
        pooled = features.mean(dim=(2, 3))
        if extras is not None:
            pooled = torch.cat([pooled.to(extras.dtype), extras], dim=1)
        return CKDN._head_score(pooled, head)

    @staticmethod
    def _extras(context: Tensor | None, detail: Tensor | None) -> Tensor | None:
        """What the head reads beside the comparator's pooled features, in the head's input order."""
        parts = [t for t in (context, detail) if t is not None]
        return torch.cat(parts, dim=1) if parts else None

    @staticmethod
    def _head_score(pooled: Tensor, head: nn.Sequential) -> Tensor:
        # The head may be kept in fp32 while the convolutional trunk runs in bf16.
        first = head[0]
        assert isinstance(first, nn.Linear)
        return torch.sigmoid(head(pooled.to(first.weight.dtype))).squeeze(1)

    def input_context(self, degraded: Tensor) -> Tensor | None:
        """The head's view of the input (N, 256) for variants with ``input_context``; else None."""
        if not self.cfg.input_context:
            return None
        return self._pool_context(self.restored_encoder(degraded))

    @staticmethod
    def _pool_context(encoded_input: Tensor) -> Tensor:
        return encoded_input.float().mean(dim=(2, 3))

    def detail_features(self, restored: Tensor, reference: Tensor) -> Tensor | None:
        """The detail branch's pooled features (N, 2 * detail_channels) for variants with one; else None."""
        return None if self.detail is None else self.detail(restored, reference)

    def compare(self, restored_features: Tensor, reference_features: Tensor, context: Tensor | None = None,
                detail: Tensor | None = None) -> Tensor:
        """Score restored-encoder features against reference-encoder features, plus the input's
        :meth:`input_context` and the pair's :meth:`detail_features` for the variants that read them."""
        if self.cfg.input_context and context is None:
            raise ValueError("this variant's head also needs the input's context: compare(r, d, model.input_context(x))")
        if self.detail is not None and detail is None:
            raise ValueError("this variant's head also needs the pair's detail features: "
                             "compare(r, d, context, detail=model.detail_features(x, y))")
        extras = self._extras(context, detail)
        return self._pool_score(self.comparator(restored_features - reference_features), self.head, extras)

    def pooled_features(self, restored: Tensor, degraded: Tensor) -> Tensor:
        """Globally pooled head inputs of the degraded-reference path: (N, 512), plus 256 with the
        input's context and 2 * detail_channels with the detail branch."""
        diff = self.restored_encoder(restored) - self.reference_encoder(degraded)
        pooled = self.comparator(diff).float().mean(dim=(2, 3))
        extras = self._extras(self.input_context(degraded), self.detail_features(restored, degraded))
        return pooled if extras is None else torch.cat([pooled, extras], dim=1)

    def score_pooled(self, pooled: Tensor) -> Tensor:
        """Scores (N,) from :meth:`pooled_features`; lets callers run the head once for many chunks."""
        return self._head_score(pooled, self.head)

    def forward(
        self,
        restored: Tensor,
        degraded: Tensor,
        restored_2: Tensor | None = None,
        pristine: Tensor | None = None,
        *,
        paths: tuple[str, ...] = ("dr", "fr", "nr", "gap"),
    ) -> Tensor | TrainOutputs:
        if restored_2 is None and pristine is None:
            return self.compare(
                self.restored_encoder(restored), self.reference_encoder(degraded), self.input_context(degraded),
                self.detail_features(restored, degraded),
            )
        if restored_2 is None or pristine is None:
            raise ValueError("training forward needs restored, degraded, restored_2 and pristine")
        return self._forward_train(restored, degraded, restored_2, pristine, set(paths))

    def _forward_train(
        self, restored: Tensor, degraded: Tensor, restored_2: Tensor, pristine: Tensor, paths: set[str]
    ) -> TrainOutputs:
        unknown = paths - set(TRAIN_PATHS)
        if unknown:
            raise ValueError(f"unknown paths {sorted(unknown)}; choose from {', '.join(TRAIN_PATHS)}")
        n = restored.shape[0]
        need_r2 = bool(paths & {"nr", "dr2"})
        need_d = bool(paths & {"dr", "dr2", "drx", "gap"})
        need_p = bool(paths & {"fr", "gap"})
        scored = [k for k in ("dr", "fr", "dr2", "drx") if k in paths]
        need_c = self.cfg.input_context and bool(scored)
        # One encoder call per encoder keeps BatchNorm statistics shared the way the
        # official code shares them (it concatenates batches through each module).
        batch = [restored] + ([restored_2] if need_r2 else []) + ([degraded] if need_c else [])
        r = self.restored_encoder(torch.cat(batch)).split(n)
        r1, r2 = r[0], (r[1] if need_r2 else None)
        context = self._pool_context(r[-1]) if need_c else None
        d = p = None
        if need_d and need_p:
            refs = self.reference_encoder(torch.cat([degraded, pristine]))
            d, p = refs[:n], refs[n:]
        elif need_d:
            d = self.reference_encoder(degraded)
        elif need_p:
            p = self.reference_encoder(pristine)
        # Every comparator input of this pass goes through it as one batch ([R1-D ; R1-P ; R2-D ; R1-D']).
        pairs = {"dr": (r1, d), "fr": (r1, p), "dr2": (r2, d), "drx": (r1, None if d is None else d.roll(1, 0))}
        scores: dict[str, Tensor] = {}
        if scored:
            diffs = []
            for k in scored:
                a, b = pairs[k]
                assert a is not None and b is not None  # computed above for every wanted path
                diffs.append(a - b)
            # Every path is conditioned on its input, the teacher's too; drx on the other sample's input.
            contexts = None
            if context is not None:
                contexts = torch.cat([context.roll(1, 0) if k == "drx" else context for k in scored])
            details = None
            if self.detail is not None:  # one call over every scored path's pair of images, as ``pairs`` above
                images = {"dr": (restored, degraded), "fr": (restored, pristine), "dr2": (restored_2, degraded),
                          "drx": (restored, degraded.roll(1, 0))}
                details = self.detail(*(torch.cat(side) for side in zip(*(images[k] for k in scored))))
            joint = self._pool_score(self.comparator(torch.cat(diffs)), self.head, self._extras(contexts, details))
            scores = dict(zip(scored, joint.split(n)))
        nr = gap = None
        if "nr" in paths:
            assert r2 is not None
            nr = self._pool_score(self.nr_comparator(r1 - r2), self.nr_head)
        if "gap" in paths:
            assert d is not None and p is not None  # computed above whenever "gap" is asked for
            gap = (d - p).pow(2).mean(dim=(1, 2, 3))
        return TrainOutputs(dr=scores.get("dr"), fr=scores.get("fr"), nr=nr, feature_gap=gap,
                            dr_2=scores.get("dr2"), dr_x=scores.get("drx"))


def frozen_inference_copy(
    model: nn.Module,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    differentiable: bool = True,
) -> CKDN:
    """A private, frozen, eval-mode copy for scoring: BatchNorm folded, trunk cast to ``dtype``.

    Casting the weights once beats autocast, which re-casts them on every call.
    With ``differentiable=False`` on CPU, ReLU and residual adds are also fused into
    oneDNN convolutions (no autograd through those; the scorer's case, not the loss's).
    The caller's model is never modified.
    """
    net = fold_batchnorm(copy.deepcopy(model).float().eval())
    assert isinstance(net, CKDN), f"expected a CKDN network, got {type(net).__name__}"
    if device is not None:
        net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for name in TRUNK_MODULES:
        module = getattr(net, name)
        if module is not None:  # variants without a detail branch
            module.to(dtype)
    if not differentiable and next(net.parameters()).device.type == "cpu":
        fuse_bottlenecks_for_cpu(net)
    return net.eval().requires_grad_(False)  # eval again: the folded convs are new modules


register_variant(
    ModelVariant(
        name=DEFAULT_ARCH,
        build=lambda: CKDN(CKDNConfig()),
        pretrained=PretrainedConfig(
            license="MIT (architecture: researchmm/CKDN); weights: as stated by their source",
            provenance="randomly initialised",
        ),
        description="CKDN (Zheng et al., ICCV 2021): ResNet-50 encoders + layer2 comparator, 288 px",
    )
)

register_variant(
    ModelVariant(
        name="ckdn_r50_ctx",
        build=lambda: CKDN(CKDNConfig(input_context=True)),
        pretrained=PretrainedConfig(
            license="MIT (architecture); weights: as stated by their source",
            provenance="randomly initialised",
        ),
        description="ckdn_r50 whose score head also sees the degraded input's pooled features (ours, not in the paper)",
    )
)

register_variant(
    ModelVariant(
        name="ckdn_r50_detail",
        build=lambda: CKDN(CKDNConfig(detail_channels=16)),
        pretrained=PretrainedConfig(
            license="MIT (architecture); weights: as stated by their source",
            provenance="randomly initialised",
        ),
        description="ckdn_r50 whose score head also reads a full-resolution detail branch (ours, not in the paper)",
    )
)

register_variant(
    ModelVariant(
        name="ckdn_alex",
        build=lambda: CKDN(CKDNConfig(encoder="alex")),
        pretrained=PretrainedConfig(
            license="MIT (architecture); weights: as stated by their source",
            provenance="randomly initialised",
        ),
        description="CKDN with shift-tolerant AlexNet conv1-2 encoders (init: stlpips_alex) + layer2 comparator",
    )
)
