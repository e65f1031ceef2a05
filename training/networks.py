"""CycleGAN networks with the reference implementation's module structure.

Module layout and state_dict names follow junyanz/pytorch-CycleGAN-and-pix2pix
(``model.N.*`` keys, ``conv_block`` inside residual blocks) so its published
generators load unchanged.

Names in code vs the paper (Zhu et al., 2017), domain A = photos, B = sketches:
  G_A  = G : photo -> sketch        D_A = D_Y : judges sketches (real_B vs G_A(A))
  G_B  = F : sketch -> photo        D_B = D_X : judges photos   (real_A vs G_B(B))
  ResnetGenerator layers, paper notation: c7s1-64, d128, d256, R256 x N, u128, u64, c7s1-3.

Three generator architectures (``ARCHS``), recorded as ``arch.upsample`` in every
checkpoint and bundle:
  "reference"  u128/u64 are stride-2 ConvTranspose2d (k3), as the reference code:
               its kernels overlap unevenly and print a checkerboard of dots.
  "resize"     u128/u64 are bilinear 2x resize + reflection pad + 3x3 conv (Odena et
               al., "Deconvolution and Checkerboard Artifacts", 2016): every output
               pixel sees the same kernel footprint. Bilinear rather than nearest: a
               nearest resize leaves a period-2 staircase that a 3x3 conv passes at a
               third of its amplitude (tests/test_metrics.py measures both). The default.
  "bicubic"    as "resize" with a bicubic 2x resize: the bilinear interpolant has a kink
               at every low-resolution sample, every other output pixel, which the next
               3x3 conv can see; swapping in bicubic at inference took the default
               model's period-2 energy to the artists' level (benchmarks/checker_origin.py
               and the README's figures). Same weights' names as "resize".
"""

from __future__ import annotations

import copy

import torch
from torch import nn


# arch name (what users pass as --arch) -> upsampling layer of u128/u64
ARCHS = {"resize": "resize", "reference": "transpose", "bicubic": "bicubic"}
UPSAMPLERS = tuple(ARCHS.values())
# resize upsamplers -> their interpolation (the others are ConvTranspose)
RESIZE_MODES = {"resize": "bilinear", "bicubic": "bicubic"}


class ResnetBlock(nn.Module):
    """R256: two 3x3 convs with reflection padding and a skip connection."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _cubic(d: float, a: float = -0.75) -> float:
    """The cubic convolution kernel torch's bicubic interpolation uses (Keys, a = -0.75)."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0


class Bicubic2x(nn.Module):
    """torch's 2x bicubic upsampling (align_corners=False, borders clamped), exactly, as an
    edge pad, a fixed depthwise 5x5 convolution giving each output pixel's 4 phases, and a
    pixel shuffle. Same numbers as nn.Upsample(mode="bicubic") to float rounding; for
    export: onnxruntime's CPU cubic Resize ran the bicubic generator 4x slower than this
    (export swaps it in, ``exportable``)."""

    def __init__(self, channels: int):
        super().__init__()
        # output 2i samples the input at i - 0.25 (taps i-2..i+1), output 2i+1 at i + 0.25
        even = [_cubic(1.75), _cubic(0.75), _cubic(0.25), _cubic(1.25), 0.0]
        odd = [0.0, _cubic(1.25), _cubic(0.25), _cubic(0.75), _cubic(1.75)]
        k1 = torch.tensor([even, odd], dtype=torch.float32)
        k2 = torch.einsum("pi,qj->pqij", k1, k1).reshape(4, 1, 5, 5)   # phase (row, col) -> 5x5
        self.channels = channels
        self.register_buffer("weight", k2.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
        y = nn.functional.conv2d(x, self.weight.to(x.dtype), groups=self.channels)
        return nn.functional.pixel_shuffle(y, 2)


def exportable(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with each 2x bicubic nn.Upsample (the "bicubic" arch's u128/u64)
    in its exact Bicubic2x form; ``net`` itself when it has none. Same state dict."""
    seq = getattr(net, "model", None)
    if not isinstance(seq, nn.Sequential) or not any(
            isinstance(m, nn.Upsample) and m.mode == "bicubic" for m in seq):
        return net
    net = copy.deepcopy(net)
    seq = net.model
    for i, m in enumerate(seq):
        if isinstance(m, nn.Upsample) and m.mode == "bicubic":
            if float(m.scale_factor) != 2.0:
                raise ValueError(f"Bicubic2x replaces 2x upsampling only, got {m.scale_factor}")
            conv = next(c for c in seq[i + 1:] if isinstance(c, nn.Conv2d))
            seq[i] = Bicubic2x(conv.in_channels).to(conv.weight.device)
    return net


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), N residual blocks, u(2ngf), u(ngf), c7s1-3, tanh.

    InstanceNorm2d(affine=False) everywhere, so convolutions carry biases (the
    reference's ``use_bias = norm_layer == InstanceNorm2d``).
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 3,
                 upsample: str = "transpose"):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if upsample not in UPSAMPLERS:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLERS)}, got {upsample!r}")
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):  # d128, d256
            mult = 2 ** i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):  # u128, u64
            mult = 2 ** (2 - i)
            if upsample == "transpose":
                layers.append(nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, kernel_size=3, stride=2,
                                                 padding=1, output_padding=1, bias=True))
            else:
                layers += [nn.Upsample(scale_factor=2, mode=RESIZE_MODES[upsample], align_corners=False),
                           nn.ReflectionPad2d(1),
                           nn.Conv2d(ngf * mult, ngf * mult // 2, kernel_size=3, padding=0, bias=True)]
            layers += [
                nn.InstanceNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: with n_layers=3 each output judges a 70x70 patch (C64-C128-C256-C512)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kw, padw = 4, 1
        seq: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_prev, nf_mult = nf_mult, min(2 ** n, 8)
            seq += [
                nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=True),
                nn.InstanceNorm2d(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        seq += [
            nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=True),
            nn.InstanceNorm2d(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor, features: bool = False):
        """The patch predictions; with ``features``, also every LeakyReLU's output (the
        discriminator feature-matching loss of pix2pixHD compares them)."""
        if not features:
            return self.model(x)
        feats = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return x, feats


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference 'normal' init: conv weights N(0, gain), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def build_generator(blocks: int = 3, ngf: int = 64, arch: str = "reference") -> ResnetGenerator:
    """``arch``: a name in ARCHS ("reference": ConvTranspose upsampling, "resize": resize-conv)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown generator arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ResnetGenerator(3, 3, ngf=ngf, n_blocks=blocks, upsample=ARCHS[arch])


def arch_name(arch: dict) -> str:
    """The ARCHS name of a checkpoint/bundle ``arch`` dict (no ``upsample`` key: reference)."""
    up = arch.get("upsample", "transpose")
    for name, u in ARCHS.items():
        if u == up:
            return name
    raise ValueError(f"unknown generator upsampling {up!r}; valid: {', '.join(UPSAMPLERS)}")


def generator_from_arch(arch: dict) -> ResnetGenerator:
    """Build the generator an ``arch`` dict (checkpoint config, bundle manifest) describes."""
    return build_generator(int(arch["blocks"]), int(arch["ngf"]), arch_name(arch))


def build_discriminator(ndf: int = 64, n_layers: int = 3) -> NLayerDiscriminator:
    return NLayerDiscriminator(3, ndf=ndf, n_layers=n_layers)


# Keys the reference's old InstanceNorm checkpoints carry and current modules lack.
_STALE_NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def clean_reference_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` (DataParallel) prefixes and stale InstanceNorm buffers."""
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.endswith(_STALE_NORM_SUFFIXES):
            continue
        out[k] = v
    return out


def infer_blocks(sd: dict[str, torch.Tensor]) -> int:
    """Number of residual blocks in a ResnetGenerator state_dict."""
    idx = {int(k.split(".")[1]) for k in sd if ".conv_block." in k}
    return len(idx)


def infer_ngf(sd: dict[str, torch.Tensor]) -> int:
    return int(sd["model.1.weight"].shape[0])


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
