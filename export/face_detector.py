"""Convert MediaPipe's BlazeFace (short range) TFLite model into the ONNX file the
runtime's face finder runs (facesketch/models/face/), once, at development time.

Why a conversion: the weights (Apache-2.0) ship inside the PyPI wheel
``mediapipe==0.10.21`` (``mediapipe/modules/face_detection/face_detection_short_range.tflite``),
but mediapipe itself pins numpy<2 and pulls jax and a second OpenCV. As ONNX the
230 KB network runs on onnxruntime (already the runtime's dependency) in about a
millisecond, and nothing is downloaded at run time.

The TFLite graph (NHWC, fp16 constants behind DEQUANTIZE) is rewritten op by op
into an NCHW ONNX graph: CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, PAD, MAX_POOL_2D,
RESHAPE, CONCATENATION. Input ``image``: float32 [N, 3, 128, 128] in [-1, 1];
outputs ``regressors`` [N, 896, 16] (box centre/size + 6 keypoints, in input
pixels relative to the anchor) and ``scores`` [N, 896, 1] (logits). The
alignment template (mean keypoints of CUFS train photos) is measured with the
converted network and stored in the file's metadata (``--template-data``).

Needs the ``tflite`` package (flatbuffer bindings; dev only) and onnx:

    python -m export.face_detector --tflite face_detection_short_range.tflite \\
        --template-data ../shared/data/cufs --out facesketch/models/face/blazeface_short_range.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from facesketch.files import sha256_file

log = logging.getLogger("facesketch.export")

SOURCE = ("mediapipe==0.10.21 wheel (PyPI), mediapipe/modules/face_detection/"
          "face_detection_short_range.tflite; Apache License 2.0, Copyright Google LLC")


class _Graph:
    """TFLite tensors -> ONNX names/initializers, NHWC 4-D tensors kept as NCHW."""

    def __init__(self, model, sub):
        import tflite
        self.tfl, self.model, self.sub = tflite, model, sub
        self.nodes, self.inits, self.consts = [], [], {}
        self.ops = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}

    def name(self, t: int) -> str:
        return f"t{t}"

    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.sub.Tensors(t).ShapeAsNumpy()]

    def buffer(self, t: int) -> np.ndarray | None:
        tensor = self.sub.Tensors(t)
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw is None or raw.size == 0:
            return None
        dtype = {0: np.float32, 1: np.float16, 2: np.int32}[tensor.Type()]
        return np.frombuffer(raw.tobytes(), dtype).reshape(self.shape(t))

    def const(self, t: int) -> np.ndarray:
        return self.consts[t]

    def init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return self.ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    def options(self, op, cls):
        o = cls()
        o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        return o


def _emit(g: _Graph, fused: int, out: str, emit) -> None:
    """Emit the main node through ``emit(name)``, then a fused activation
    (0 none, 1 RELU) writing ``out``, in topological order."""
    if fused not in (0, 1):
        raise ValueError(f"fused activation {fused} is not supported")
    emit(out if fused == 0 else out + "_pre")
    if fused == 1:
        g.node("Relu", [out + "_pre"], [out])


def _conv(g: _Graph, op, depthwise: bool) -> None:
    tfl = g.tfl
    x, w, b = op.InputsAsNumpy()
    y = int(op.OutputsAsNumpy()[0])
    o = g.options(op, tfl.DepthwiseConv2DOptions if depthwise else tfl.Conv2DOptions)
    kernel = g.const(w).astype(np.float32)
    if depthwise:                      # [1, kh, kw, C] -> [C, 1, kh, kw]
        kernel = kernel.transpose(3, 0, 1, 2)
        group = kernel.shape[0]
    else:                              # [O, kh, kw, I] -> [O, I, kh, kw]
        kernel = kernel.transpose(0, 3, 1, 2)
        group = 1
    pad = "SAME_UPPER" if o.Padding() == tfl.Padding.SAME else "VALID"
    args = [g.name(x), g.init(f"w{y}", kernel), g.init(f"b{y}", g.const(b).astype(np.float32))]
    _emit(g, o.FusedActivationFunction(), g.name(y), lambda out: g.node(
        "Conv", args, [out], strides=[o.StrideH(), o.StrideW()], auto_pad=pad, group=group))


def _convert_op(g: _Graph, op) -> None:
    tfl = g.tfl
    kind = g.op_name(op)
    ins = [int(i) for i in op.InputsAsNumpy()]
    outs = [int(i) for i in op.OutputsAsNumpy()]
    if kind == "DEQUANTIZE":
        g.consts[outs[0]] = g.buffer(ins[0]).astype(np.float32)
    elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        _conv(g, op, kind == "DEPTHWISE_CONV_2D")
    elif kind == "RELU":
        g.node("Relu", [g.name(ins[0])], [g.name(outs[0])])
    elif kind == "ADD":
        o = g.options(op, tfl.AddOptions)
        _emit(g, o.FusedActivationFunction(), g.name(outs[0]),
              lambda out: g.node("Add", [g.name(ins[0]), g.name(ins[1])], [out]))
    elif kind == "PAD":
        p = g.buffer(ins[1]).astype(np.int64)           # [[n0,n1],[h0,h1],[w0,w1],[c0,c1]]
        nchw = p[[0, 3, 1, 2]]
        g.node("Pad", [g.name(ins[0]), g.init(f"pads{outs[0]}", np.concatenate([nchw[:, 0], nchw[:, 1]]))],
               [g.name(outs[0])], mode="constant")
    elif kind == "MAX_POOL_2D":
        o = g.options(op, tfl.Pool2DOptions)
        pad = "SAME_UPPER" if o.Padding() == tfl.Padding.SAME else "VALID"
        g.node("MaxPool", [g.name(ins[0])], [g.name(outs[0])], kernel_shape=[o.FilterHeight(), o.FilterWidth()],
               strides=[o.StrideH(), o.StrideW()], auto_pad=pad)
    elif kind == "RESHAPE":                              # NCHW back to NHWC, then TFLite's reshape
        nhwc = g.name(outs[0]) + "_nhwc"
        g.node("Transpose", [g.name(ins[0])], [nhwc], perm=[0, 2, 3, 1])
        shape = np.array([-1, *g.shape(outs[0])[1:]], np.int64)
        g.node("Reshape", [nhwc, g.init(f"shape{outs[0]}", shape)], [g.name(outs[0])])
    elif kind == "CONCATENATION":
        o = g.options(op, tfl.ConcatenationOptions)
        if len(g.shape(outs[0])) == 4:
            raise ValueError("4-D concatenation is not supported")
        g.node("Concat", [g.name(i) for i in ins], [g.name(outs[0])], axis=o.Axis())
    else:
        raise ValueError(f"TFLite op {kind} is not supported by this converter")


def convert(tflite_path: Path) -> "onnx.ModelProto":  # noqa: F821 - onnx imported lazily
    """The BlazeFace TFLite file as an ONNX model (opset 13)."""
    import onnx
    import tflite
    from onnx import TensorProto, helper

    buf = Path(tflite_path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    sub = model.Subgraphs(0)
    g = _Graph(model, sub)
    (inp,) = [int(i) for i in sub.InputsAsNumpy()]
    g.node("Identity", ["image"], [g.name(inp)])
    for i in range(sub.OperatorsLength()):
        _convert_op(g, sub.Operators(i))
    outs = [int(i) for i in sub.OutputsAsNumpy()]
    names = {"regressors": "regressors", "classificators": "scores"}
    for t in outs:
        g.node("Identity", [g.name(t)], [names[sub.Tensors(t).Name().decode()]])
    n, h, w, c = g.shape(inp)
    graph = helper.make_graph(
        g.nodes, "blazeface_short_range",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(names[sub.Tensors(t).Name().decode()], TensorProto.FLOAT,
                                       ["batch", *g.shape(t)[1:]]) for t in outs],
        g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="facesketch")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def measure_template(onnx_path: Path, data: Path, limit: int = 400) -> dict:
    """Mean keypoints of the CUFS train photos, as fractions of the 200x250 frame."""
    from facesketch.face import FaceFinder, KEYPOINTS
    from facesketch.imageio import decode, list_images

    finder = FaceFinder(onnx_path, template={"size": [200, 250], "points": [[0, 0]] * 3})
    pts, sizes, missed = [], [], 0
    for p in list_images(Path(data) / "train_photos")[:limit]:
        rgb = decode(p)
        faces = finder.detect(rgb)
        if not faces:
            missed += 1
            continue
        h, w = rgb.shape[:2]
        pts.append(faces[0].keypoints / np.array([w, h], np.float32))
        sizes.append((w, h))
    if not pts:
        raise ValueError(f"no face found in {data}/train_photos")
    mean = np.mean(pts, axis=0)
    spread = np.std(pts, axis=0)
    w, h = np.median(np.array(sizes), axis=0)
    log.info("template from %d photos (%d without a face): %s", len(pts), missed, mean.round(4).tolist())
    return {"size": [int(w), int(h)], "points": mean.round(5).tolist(), "names": list(KEYPOINTS),
            "std": spread.round(5).tolist(), "photos": len(pts), "missed": missed,
            "source": "CUFS train photos"}


def main(argv: list[str] | None = None) -> int:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tflite", required=True, type=Path)
    ap.add_argument("--template-data", required=True, type=Path, help="CUFS folder (train_photos/)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    m = convert(a.tflite)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, a.out)
    template = measure_template(a.out, a.template_data)
    meta = {"facesketch.face.template": json.dumps(template), "facesketch.face.source": SOURCE,
            "facesketch.face.tflite_sha256": sha256_file(a.tflite),
            "facesketch.face.anchors": "blazeface-short-range-128"}
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, a.out)
    print(json.dumps(template))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
