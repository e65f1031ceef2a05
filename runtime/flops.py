"""FLOPs of the ResnetGenerator, counted analytically (no torch, no onnx needed).

Convention: FLOPs = 2 x multiply-accumulates of the convolutions (Conv and
ConvTranspose); norms, activations, padding and bias adds are ignored (< 1%).
``onnx_conv_flops`` counts the same from an ONNX graph to cross-check.
"""

from __future__ import annotations

import math
from typing import Any


def generator_macs(blocks: int, ngf: int, size: int, input_nc: int = 3, output_nc: int = 3,
                   upsample: str = "transpose") -> int:
    """Conv MACs of one generator forward pass on a size x size image.

    ``upsample``: "transpose" (ConvTranspose, MACs per input pixel) or a resize ("resize",
    "bicubic": 2x resize then a 3x3 conv, MACs per output pixel: 4x the transpose's).
    """
    up = 1 if upsample == "transpose" else 4
    s1, s2 = math.ceil(size / 2), math.ceil(size / 4)          # stride-2 convs: k3, p1
    macs = size * size * ngf * input_nc * 49                   # c7s1-ngf
    macs += s1 * s1 * (2 * ngf) * ngf * 9                      # d(2ngf)
    macs += s2 * s2 * (4 * ngf) * (2 * ngf) * 9                # d(4ngf)
    macs += blocks * 2 * s2 * s2 * (4 * ngf) ** 2 * 9          # R(4ngf) x blocks, two convs each
    macs += up * s2 * s2 * (4 * ngf) * (2 * ngf) * 9           # u(2ngf)
    macs += up * (2 * s2) * (2 * s2) * (2 * ngf) * ngf * 9     # u(ngf)
    macs += (4 * s2) * (4 * s2) * output_nc * ngf * 49         # c7s1-3 (on the upsampled size)
    return macs


def generator_flops(arch: dict[str, Any], size: int) -> int:
    return 2 * generator_macs(int(arch["blocks"]), int(arch["ngf"]), size,
                              int(arch.get("input_nc", 3)), int(arch.get("output_nc", 3)),
                              str(arch.get("upsample", "transpose")))


def onnx_conv_flops(path: str, size: int) -> int:
    """2 x conv MACs of an ONNX model at batch 1, size x size.

    Shapes are read off a real run (onnxruntime, every conv's input, weight and
    output exposed as graph outputs), not off shape inference, which cannot follow
    the computed pads of some exporters' graphs. Needs the onnx package.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        raise ValueError(f"{path}: no Conv or ConvTranspose node in the graph")
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    present = {o.name for o in model.graph.output}
    wanted = []
    for n in convs:
        for name in (n.input[0], n.output[0]) + (() if n.input[1] in inits else (n.input[1],)):
            if name not in present and name not in wanted:
                wanted.append(name)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(w) for w in wanted)
    inp = model.graph.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {inp.name: np.zeros((1, 3, size, size), dtype)})
    shapes = {k: list(v.shape) for k, v in zip(names, values)}
    total = 0
    for n in convs:
        w = inits.get(n.input[1]) or shapes[n.input[1]]
        if n.op_type == "Conv":                         # w: Cout, Cin/g, kh, kw; per output pixel
            out = shapes[n.output[0]]
            total += out[2] * out[3] * w[0] * w[1] * w[2] * w[3]
        else:                                           # w: Cin, Cout/g, kh, kw; per input pixel
            xin = shapes[n.input[0]]
            total += xin[2] * xin[3] * w[0] * w[1] * w[2] * w[3]
    return 2 * total
