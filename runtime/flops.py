"""FLOPs of the ResnetGenerator, counted analytically (no torch, no onnx needed).

Convention: FLOPs = 2 x multiply-accumulates of the convolutions (Conv and
ConvTranspose); norms, activations, padding and bias adds are ignored (< 1%).
``onnx_conv_flops`` counts the same from an ONNX graph to cross-check.
"""

from __future__ import annotations

import math
from typing import Any


def generator_macs(blocks: int, ngf: int, size: int, input_nc: int = 3, output_nc: int = 3) -> int:
    """Conv MACs of one generator forward pass on a size x size image."""
    s1, s2 = math.ceil(size / 2), math.ceil(size / 4)          # stride-2 convs: k3, p1
    macs = size * size * ngf * input_nc * 49                   # c7s1-ngf
    macs += s1 * s1 * (2 * ngf) * ngf * 9                      # d(2ngf)
    macs += s2 * s2 * (4 * ngf) * (2 * ngf) * 9                # d(4ngf)
    macs += blocks * 2 * s2 * s2 * (4 * ngf) ** 2 * 9          # R(4ngf) x blocks, two convs each
    macs += s2 * s2 * (4 * ngf) * (2 * ngf) * 9                # u(2ngf): ConvTranspose, per input pixel
    macs += (2 * s2) * (2 * s2) * (2 * ngf) * ngf * 9          # u(ngf)
    macs += (4 * s2) * (4 * s2) * output_nc * ngf * 49         # c7s1-3 (on the upsampled size)
    return macs


def generator_flops(arch: dict[str, Any], size: int) -> int:
    return 2 * generator_macs(int(arch["blocks"]), int(arch["ngf"]), size,
                              int(arch.get("input_nc", 3)), int(arch.get("output_nc", 3)))


def onnx_conv_flops(path: str, size: int) -> int:
    """2 x conv MACs of an ONNX model at batch 1, size x size (needs the onnx package)."""
    import onnx
    from onnx import shape_inference
    model = onnx.load(path)
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, size, size)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]                   # Cout, Cin/g, kh, kw
            out = shapes[n.output[0]]               # N, Cout, H, W
            total += out[2] * out[3] * w[0] * w[1] * w[2] * w[3]
        elif n.op_type == "ConvTranspose":
            w = inits[n.input[1]]                   # Cin, Cout/g, kh, kw
            xin = shapes[n.input[0]]                # N, Cin, H, W
            total += xin[2] * xin[3] * w[0] * w[1] * w[2] * w[3]
    return 2 * total
