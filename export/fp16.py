"""fp32 -> fp16 rewrite of an ONNX graph that keeps chosen ops in fp32.

Weights and activations become float16 except for the inputs and outputs of the
ops named in ``keep_fp32`` (InstanceNormalization: its mean/variance reductions
lose too much in fp16; Tanh: the final activation feeding the fp32 output).
Cast nodes are inserted exactly where a tensor crosses between the two
precisions, one Cast per (tensor, precision), and graph inputs/outputs stay
float32 so callers never see fp16. No subgraphs are handled (this generator
has none); a graph with subgraphs is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
# Inputs that ONNX types as float32 whatever the data's precision: op -> input indices
# (Resize's ``scales``; the "resize" generator arch upsamples with Resize).
FP32_ONLY_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({2})}


def _input_precision(node: onnx.NodeProto, index: int, keep: bool) -> int:
    if keep or index in FP32_ONLY_INPUTS.get(node.op_type, ()):
        return FLOAT
    return HALF


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor of the graph (by shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = {vi.name for vi in list(g.value_info) + list(g.input) + list(g.output)
             if vi.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in g.initializer if t.data_type == FLOAT}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    names.update(n.output)
    return names


def _outputs_to_fp32(g, nodes: list, produced: dict[str, int]) -> None:
    """Graph outputs stay float32: an fp16 output gets a Cast back (appended to ``nodes``)."""
    for o in g.output:
        if produced.get(o.name) == HALF:
            inner = f"{o.name}__fp16"
            for n in nodes:
                for i, name in enumerate(n.output):
                    if name == o.name:
                        n.output[i] = inner
                for i, name in enumerate(n.input):
                    if name == o.name:
                        n.input[i] = inner
            nodes.append(helper.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"cast_{o.name}"))


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = ("InstanceNormalization", "Tanh"),
                    ) -> onnx.ModelProto:
    """Return a copy of ``model`` in fp16 with ``keep_fp32`` op types left in fp32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise ValueError(f"fp16 rewrite does not handle subgraphs (node {n.name or n.op_type})")
    floats = _float_tensors(model)
    graph_inputs = {i.name for i in g.input}
    keep_nodes = [n.op_type in keep_fp32 for n in g.node]

    # Who consumes each float tensor, and in which precision.
    wants: dict[str, set[int]] = {}
    for n, keep in zip(g.node, keep_nodes):
        for i, name in enumerate(n.input):
            if name in floats:
                wants.setdefault(name, set()).add(_input_precision(n, i, keep))
    for o in g.output:
        wants.setdefault(o.name, set()).add(FLOAT)

    # Precision each float tensor is produced in.
    produced: dict[str, int] = {name: FLOAT for name in graph_inputs if name in floats}
    inits = {t.name: t for t in g.initializer}
    for name, t in inits.items():
        if t.data_type != FLOAT:
            continue
        want = wants.get(name, {HALF})
        if want == {FLOAT}:
            produced[name] = FLOAT
        else:  # any fp16 consumer: store it in fp16 (a fp32 consumer gets a Cast)
            arr = numpy_helper.to_array(t).astype(np.float16)
            t.CopyFrom(numpy_helper.from_array(arr, name))
            produced[name] = HALF
    for n, keep in zip(g.node, keep_nodes):
        if n.op_type == "Constant" and not keep and wants.get(n.output[0], {HALF}) != {FLOAT}:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16),
                                                         a.t.name))
        for name in n.output:
            if name in floats:
                fp32_const = n.op_type == "Constant" and wants.get(name, {HALF}) == {FLOAT}
                produced[name] = FLOAT if keep or fp32_const else HALF

    # Rewire inputs through Casts where precisions differ.
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp32' if to == FLOAT else 'fp16'}"
            casts[key] = out
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
        return casts[key]

    rewritten: list[onnx.NodeProto] = []
    for n, keep in zip(g.node, keep_nodes):
        for i, name in enumerate(n.input):
            want = _input_precision(n, i, keep)
            if name in produced and produced[name] != want:
                n.input[i] = cast(name, want)
        rewritten.extend(new_nodes)
        new_nodes.clear()
        rewritten.append(n)
    _outputs_to_fp32(g, rewritten, produced)
    del g.node[:]
    g.node.extend(rewritten)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)
