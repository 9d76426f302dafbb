"""Backbones with a functional forward over explicit parameter dicts, and the task heads.

A `Backbone` is an immutable pairing of an architecture and its meta-learned parameters.
Nothing here ever writes into those parameters: every forward takes a parameter dict,
so many threads can adapt from one shared backbone at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metacore.errors import MetacoreError, check_number
from metacore.images import CHARACTER_SPEC, PHOTO_SPEC, InputSpec

Params = dict[str, Tensor]
HEAD_KEYS = ("head.weight", "head.bias")


def conv_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """3x3 conv, GroupNorm (per image, so predictions never depend on the batch), ReLU, 2x2 max-pool."""
    norm = nn.GroupNorm(groups, out_channels) if groups else nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """The classic few-shot Conv-4: 4 x [conv 3x3, norm, ReLU, max-pool 2x2], flattened features.

    With `scale` > 0 the features are centred (minus a learned `center`), L2-normalised and multiplied by a
    learned scale (starting at `scale`). One gradient step from a zero head then writes each class's mean
    direction into its row of the head: a cosine-prototype classifier. Raw features make that first step a poor
    one (their lengths differ), and uncentred ones a timid one (after ReLU they all point one way, cosine 0.9 on
    average, so the logits the head can reach in a few stable steps stay small).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, groups: int = 8, scale: float = 0.0) -> None:
        super().__init__()
        channels = [in_channels, hidden, hidden, hidden, hidden]
        self.blocks = nn.Sequential(*[conv_block(channels[i], channels[i + 1], groups) for i in range(4)])
        self.scale = nn.Parameter(torch.full((), float(scale))) if scale > 0 else None
        self.center = nn.Parameter(torch.zeros(hidden)) if scale > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        # The same function as `self.blocks(x)`, computed faster (on CPU: 1.2x a meta-step, 1.4x an inner step):
        # channels-last tensors from the first layer on (NCHW max-pooling is ~10x slower on CPU), that first
        # layer (few input channels) as one matrix product, and ReLU after pooling (they commute; a quarter
        # of the work).
        for conv, norm, relu, pool in self.blocks:
            x = relu(pool(norm(few_channel_conv(conv, x) if fits_few_channel_conv(conv) else conv(x))))
        x = x.flatten(1)
        return x if self.scale is None else self.scale * F.normalize(x - self.center, dim=-1)


def fits_few_channel_conv(conv: nn.Conv2d) -> bool:
    """Whether `few_channel_conv` computes this layer: few input channels, 3x3, stride 1, padding 1."""
    return (
        conv.in_channels <= 3
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def few_channel_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 3x3, padding-1 convolution as unfold + one matmul, returned channels-last."""
    n, _, h, w = x.shape
    columns = F.unfold(x, 3, padding=1).transpose(1, 2)  # n, h*w, in_channels*9
    out = columns @ conv.weight.flatten(1).T + conv.bias
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


class FeatureAdapter(nn.Module):
    """The meta-learned part of a photo model, on top of a frozen body's features.

    Per-image LayerNorm (no batch statistics; with `affine`, a learned per-channel scale and shift), a low-rank
    residual correction (zero at initialisation, so training starts from the body's own feature geometry; none
    with `rank` 0), then L2 normalisation times a learned scale: prototype distances become cosine distances with
    a learned temperature.
    """

    def __init__(self, in_dim: int = 1280, rank: int = 64, scale: float = 4.0, affine: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, elementwise_affine=affine)
        self.residual = rank > 0
        if self.residual:
            self.down = nn.Linear(in_dim, rank, bias=False)
            self.up = nn.Linear(rank, in_dim, bias=False)
            nn.init.zeros_(self.up.weight)
        self.scale = nn.Parameter(torch.full((), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        if self.residual:
            h = h + self.up(self.down(h))
        return self.scale * F.normalize(h, dim=-1)


class CentredNorm(nn.Module):
    """A frozen network's features, centred and L2-normalised times a fixed scale (CL2N): what a zero head reads
    when your own model is in the lab. The centre is the task's support mean (set by `FrozenFeatures`)."""

    def __init__(self, in_dim: int = 512, scale: float = 10.0) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.zeros(in_dim))
        self.scale = nn.Parameter(torch.full((), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x - self.center, dim=-1)


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: how to build the architecture, what input it takes, its feature size."""

    build: Callable[..., nn.Module]
    input_spec: InputSpec
    feature_dim: Callable[[dict], int]
    defaults: dict = field(default_factory=dict)


BACKBONES: dict[str, BackboneSpec] = {
    "conv4": BackboneSpec(
        build=Conv4,
        input_spec=CHARACTER_SPEC,
        feature_dim=lambda kw: kw.get("hidden", 64),  # 28 -> 14 -> 7 -> 3 -> 1 pixels
        defaults={"in_channels": 1, "hidden": 64, "groups": 8, "scale": 0.0},
    ),
    "feature_adapter": BackboneSpec(
        build=FeatureAdapter,
        input_spec=PHOTO_SPEC,
        feature_dim=lambda kw: kw.get("in_dim", 1280),
        defaults={"in_dim": 1280, "rank": 64, "scale": 4.0, "affine": True},
    ),
    "centred_norm": BackboneSpec(
        build=CentredNorm,
        input_spec=PHOTO_SPEC,  # replaced by your model's own, with its body
        feature_dim=lambda kw: kw.get("in_dim", 512),
        defaults={"in_dim": 512, "scale": 10.0},
    ),
}


FORWARD_CHUNK = 512


class Backbone:
    """An architecture from the registry plus its (meta-learned) parameters.

    `features(params, x)` runs the architecture with any parameter dict. The module used
    for the call is a per-thread template built on the meta device: `functional_call` swaps
    parameters into the module it is given, so sharing one module across threads would race.
    """

    def __init__(self, name: str, params: Params | None = None, input_spec: InputSpec | None = None, **kwargs) -> None:
        if name not in BACKBONES:
            raise MetacoreError(f"unknown backbone '{name}' (known: {', '.join(BACKBONES)})")
        entry = BACKBONES[name]
        self.name = name
        self.kwargs = {**entry.defaults, **kwargs}
        self.input_spec = input_spec or entry.input_spec
        self.feature_dim = entry.feature_dim(self.kwargs)
        if params is None:
            params = dict(entry.build(**self.kwargs).named_parameters())
        self.params: Params = {k: v.detach() for k, v in params.items()}
        self._local = threading.local()
        try:
            shapes = {k: v.shape for k, v in self._template().state_dict().items()}
        except TypeError as exc:
            raise MetacoreError(f"backbone '{name}' cannot be built with {self.kwargs} ({exc})") from None
        if set(self.params) != set(shapes):
            missing, extra = sorted(set(shapes) - set(self.params)), sorted(set(self.params) - set(shapes))
            raise MetacoreError(
                f"parameters do not fit backbone '{name}' (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        wrong = [k for k, shape in shapes.items() if self.params[k].shape != shape]
        if wrong:
            k = wrong[0]
            raise MetacoreError(
                f"parameters do not fit backbone '{name}' {self.kwargs}: '{k}' has shape "
                f"{tuple(self.params[k].shape)}, the architecture needs {tuple(shapes[k])}"
            )

    def _template(self) -> nn.Module:
        module = getattr(self._local, "module", None)
        if module is None:
            with torch.device("meta"):
                module = BACKBONES[self.name].build(**self.kwargs)
            self._local.module = module
        return module

    def features(self, params: Params, x: Tensor) -> Tensor:
        """Feature vectors of images `x` under the body parameters in `params` (other keys are ignored).

        Without autograd, a large batch runs FORWARD_CHUNK images at a time (each image's features do not
        depend on the others), so that 10,000 support images do not need 10,000 images' activations at once.
        """
        body = {k: params[k] for k in self.params}
        if torch.is_grad_enabled() or len(x) <= FORWARD_CHUNK:
            return functional_call(self._template(), body, (x,))
        return torch.cat([functional_call(self._template(), body, (part,)) for part in x.split(FORWARD_CHUNK)])

    def with_feature_scale(self, scale: float, center: Tensor | None = None) -> Backbone:
        """The same Conv-4 with centred, L2-normalised features times a learned scale starting at `scale` (see
        `Conv4`); `center` is where the centre starts (e.g. the mean feature of the training images)."""
        if self.name != "conv4":
            raise MetacoreError(f"--feature-scale applies to the conv4 backbone, not '{self.name}'")
        if "scale" in self.params:
            raise MetacoreError(
                f"this backbone already normalises its features (learned scale {float(self.params['scale']):.3g}); "
                "leave --feature-scale out"
            )
        check_number(scale, "--feature-scale", 0.0, 1000.0, above=True)
        like = next(iter(self.params.values()))
        center = like.new_zeros(self.feature_dim) if center is None else center.to(like)
        params = {**self.params, "scale": like.new_tensor(float(scale)), "center": center}
        return Backbone(self.name, params, self.input_spec, **{**self.kwargs, "scale": float(scale)})

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Backbone:
        params = {k: v.to(device, dtype) if dtype else v.to(device) for k, v in self.params.items()}
        return Backbone(self.name, params, self.input_spec, **self.kwargs)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device


def linear_head(features: Tensor, params: Params) -> Tensor:
    return features @ params["head.weight"].T + params["head.bias"]


def zero_head(way: int, dim: int, like: Tensor) -> Params:
    """All-zero head (Kao et al. 2022): any number of classes, no bias toward any class at step 0."""
    return {"head.weight": like.new_zeros(way, dim), "head.bias": like.new_zeros(way)}


def class_means(features: Tensor, labels: Tensor, way: int) -> Tensor:
    onehot = F.one_hot(labels, way).to(features.dtype)
    return (onehot.T @ features) / onehot.sum(0).unsqueeze(1)


def proto_head(features: Tensor, labels: Tensor, way: int) -> Params:
    """ProtoMAML head (Triantafillou et al. 2020): W = 2c_k, b = -|c_k|^2, i.e. -|x - c_k|^2 up to a per-x constant."""
    means = class_means(features, labels, way)
    return {"head.weight": 2 * means, "head.bias": -(means**2).sum(1)}


HEADS = ("zero", "proto")


def init_head(kind: str, features: Tensor, labels: Tensor, way: int) -> Params:
    if kind == "zero":
        return zero_head(way, features.shape[-1], features)
    if kind == "proto":
        return proto_head(features, labels, way)
    raise MetacoreError(f"unknown head '{kind}' (choose: {', '.join(HEADS)})")
