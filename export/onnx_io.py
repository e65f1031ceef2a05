"""Writing ONNX files: the one place every ONNX-based exporter (onnx, onnx-fp16,
onnx-int8, openvino, tensorrt, triton) gets its graphs from.

``write_onnx`` exports a generator with dynamic batch and spatial size;
``save_onnx`` stamps the facesketch metadata (metadata_props), checks and saves a
graph and records its inputs/outputs in the manifest notes; ``fp32_onnx`` is the
shared fp32 graph of a direction, written once per export and reused.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from facesketch.formats import FORMATS

from .context import ONNX_INPUT, ONNX_OUTPUT, ExportContext, quiet

log = logging.getLogger("facesketch.export")


# ------------------------------------------------------------------ ONNX helpers
def _set_onnx_metadata(model, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith("facesketch.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = f"facesketch.{k}", str(v)


def _rename_dims(model) -> None:
    """Name the input's dynamic dims batch/height/width (and rewrite expressions using them)."""
    names = {0: "batch", 2: "height", 3: "width"}
    mapping = {}
    for i, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim):
        if d.dim_param and i in names:
            mapping[d.dim_param] = names[i]
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: mapping[m.group(1)], d.dim_param)


def _io(model) -> dict:
    def desc(vi):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return {"name": vi.name, "shape": dims, "dtype": "float32"}
    ins, outs = [desc(v) for v in model.graph.input], [desc(v) for v in model.graph.output]
    dyn = {v["name"]: {str(i): d for i, d in enumerate(v["shape"]) if isinstance(d, str)}
           for v in ins + outs}
    return {"inputs": ins, "outputs": outs, "dynamic_axes": dyn}


def save_onnx(ctx: ExportContext, model, direction: str, fmt: str, path: Path) -> Path:
    import onnx
    _set_onnx_metadata(model, ctx.metadata(direction, fmt))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    ctx.note(fmt, direction, io=_io(model))
    return path


def write_onnx(ctx: ExportContext, direction: str, path: Path, fmt: str = "onnx") -> Path:
    """fp32 ONNX with dynamic batch and spatial size.

    torch.onnx.export(dynamo=True) is the supported path in torch >= 2.9 (the
    TorchScript exporter is deprecated); it emits opset 18 for this model (its Pad
    has no adapter down to 17) and constant-folds/simplifies the graph with the
    onnxscript optimizer. The TorchScript exporter (opset 17, do_constant_folding)
    is kept as a fallback for torch builds where the dynamo exporter fails.
    """
    import onnx
    import torch
    from training.networks import exportable
    net = exportable(ctx.net(direction))   # bicubic upsampling as fixed convs: fast in onnxruntime
    x = torch.from_numpy(ctx.parity_inputs(direction)[:1])
    opset = int(FORMATS["onnx"].options.get("opset", 18))
    exporter = "dynamo"
    with quiet():
        try:
            from torch.export import Dim
            prog = torch.onnx.export(net, (x,), None, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                     opset_version=opset, dynamo=True, optimize=True, verbose=False,
                                     dynamic_shapes=({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},))
            model = prog.model_proto
        except Exception as exc:  # fall back to the TorchScript exporter, saying why
            log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter",
                        type(exc).__name__, str(exc).splitlines()[0][:200])
            exporter = f"torchscript (dynamo failed: {type(exc).__name__})"
            tmp = ctx.work / f"{direction}.ts.onnx"
            axes = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(net, (x,), str(tmp), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              opset_version=min(opset, 17), dynamo=False, do_constant_folding=True,
                              dynamic_axes={ONNX_INPUT: axes, ONNX_OUTPUT: axes})
            model = onnx.load(str(tmp))
    _rename_dims(model)
    ctx.note(fmt, direction, info={"exporter": exporter,
                                   "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))})
    return save_onnx(ctx, model, direction, fmt, path)


def fp32_onnx(ctx: ExportContext, direction: str) -> Path:
    """The fp32 ONNX of ``direction`` (the bundle's own when 'onnx' was exported)."""
    path = ctx.onnx_file(direction)
    if path is None:
        path = write_onnx(ctx, direction, ctx.work / f"{direction}.base.onnx", fmt="onnx")
        ctx.set_onnx_file(direction, path)
    return path
