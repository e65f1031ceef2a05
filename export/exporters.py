"""One exporter per bundle format, all with the same signature.

    fn(ctx: ExportContext, direction: str, out_path: Path) -> Path

Each writes the file for one direction at ``out_path`` (companion files next
to it, reported through ``ctx.note``) and returns the path it wrote. Timing,
size logging, parity checking and error context are the wrapper's job
(export.bundle.run_format), not the exporters'.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from facesketch.formats import FORMATS

from .context import ONNX_INPUT, ONNX_OUTPUT, ExportContext, FormatSkipped, quiet
from .onnx_io import fp32_onnx, save_onnx, write_onnx

log = logging.getLogger("facesketch.export")
Exporter = Callable[[ExportContext, str, Path], Path]


# ------------------------------------------------------------------ exporters
def export_onnx(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    path = write_onnx(ctx, direction, out_path, fmt="onnx")
    ctx.set_onnx_file(direction, path)  # later ONNX-derived formats start from this file
    return path


def export_onnx_fp16(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    import onnx
    from .fp16 import convert_to_fp16
    keep = tuple(FORMATS["onnx-fp16"].options.get("keep_fp32", ("InstanceNormalization", "Tanh")))
    model = convert_to_fp16(onnx.load(str(fp32_onnx(ctx, direction))), keep_fp32=keep)
    ctx.note("onnx-fp16", direction, info={"kept_fp32_ops": list(keep), "io_dtype": "float32"})
    return save_onnx(ctx, model, direction, "onnx-fp16", out_path)


def _edge_convs(model) -> list[str]:
    """Names of the first and last Conv nodes (image in / image out)."""
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    return [convs[0], convs[-1]] if len(convs) >= 2 else convs


def export_onnx_int8(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    opts = FORMATS["onnx-int8"].options
    calib = ctx.calibration(direction, limit=int(opts.get("calibration_images", 64)))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(len(calib)))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {ONNX_INPUT: calib[i:i + 1]}

    pre = ctx.work / f"{direction}.int8-pre.onnx"
    with quiet():
        quant_pre_process(str(fp32_onnx(ctx, direction)), str(pre), skip_symbolic_shape=True)
    exclude = _edge_convs(onnx.load(str(pre))) if opts.get("keep_fp32_edges") else []
    method = getattr(CalibrationMethod, opts.get("calibrate_method", "MinMax"))
    q = ctx.work / f"{direction}.int8-q.onnx"
    with quiet(capture_output=True):
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=bool(opts.get("per_channel", True)),
                        reduce_range=bool(opts.get("reduce_range", False)),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(opts.get("op_types", ("Conv", "ConvTranspose"))),
                        nodes_to_exclude=exclude, calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    model = onnx.load(str(q))
    ctx.note("onnx-int8", direction, info={
        "quant_format": "QDQ", "activations": "uint8 asymmetric", "weights": "int8 symmetric",
        "per_channel": bool(opts.get("per_channel", True)), "reduce_range": bool(opts.get("reduce_range", False)),
        "calibrate_method": opts.get("calibrate_method", "MinMax"), "fp32_nodes": exclude,
        "calibration_images": len(calib), "calibration_folder": str(ctx.images_folder(direction))})
    return save_onnx(ctx, model, direction, "onnx-int8", out_path)


def _ov_model(ctx: ExportContext, direction: str, fmt: str):
    import openvino as ov
    model = ov.convert_model(str(fp32_onnx(ctx, direction)))
    for k, v in ctx.metadata(direction, fmt).items():
        model.set_rt_info(v, ["facesketch", k])
    return model


def _ov_save(ctx: ExportContext, model, direction: str, fmt: str, out_path: Path) -> Path:
    import openvino as ov
    ov.save_model(model, str(out_path), compress_to_fp16=False)
    weights = out_path.with_suffix(".bin")
    ctx.note(fmt, direction, companions=[{"path": weights, "role": "weights"}],
             io={"inputs": [{"name": ONNX_INPUT, "shape": ["batch", 3, "height", "width"], "dtype": "float32"}],
                 "outputs": [{"name": ONNX_OUTPUT, "shape": ["batch", 3, "height", "width"], "dtype": "float32"}],
                 "dynamic_axes": {ONNX_INPUT: {"0": "batch", "2": "height", "3": "width"},
                                  ONNX_OUTPUT: {"0": "batch", "2": "height", "3": "width"}}})
    return out_path


def export_openvino(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    model = _ov_model(ctx, direction, "openvino")
    ctx.note("openvino", direction, info={"ir_precision": "fp32", "inference_precision_hint": "f32"})
    return _ov_save(ctx, model, direction, "openvino", out_path)


def _ov_speed_check(ctx: ExportContext, direction: str, fp32_model, int8_model) -> dict:
    """Median batch-1 latency of the int8 and fp32 IR through the runtime's OpenVINO backend."""
    import openvino as ov
    from runtime.backends import BACKENDS
    from runtime.select import probe_input, time_interleaved
    runners = {}
    for name, model, fmt in (("fp32", fp32_model, "openvino"), ("int8", int8_model, "openvino-int8")):
        xml = ctx.work / f"{direction}.speed-{name}.xml"
        for k, v in ctx.metadata(direction, fmt).items():
            model.set_rt_info(v, ["facesketch", k])
        ov.save_model(model, str(xml), compress_to_fp16=False)
        spec = BACKENDS["openvino-cpu" if name == "fp32" else "openvino-cpu-int8"]
        entry = {"format": fmt, "direction": direction, "image_size": ctx.size}
        runners[name] = spec.create({"model": xml, "weights": xml.with_suffix(".bin")}, entry).load()
    samples = time_interleaved({n: b.run for n, b in runners.items()}, probe_input(ctx.size),
                               warmup=3, rounds=15, budget_s=20.0)
    for b in runners.values():
        b.close()
    med = {n: float(np.median(v)) for n, v in samples.items()}
    return {"fp32_ms": round(med["fp32"], 3), "int8_ms": round(med["int8"], 3),
            "speedup": round(med["fp32"] / med["int8"], 3), "rounds": len(samples["fp32"]),
            "batch": 1, "size": ctx.size}


def export_openvino_int8(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    with quiet():
        import nncf
    opts = FORMATS["openvino-int8"].options
    calib = ctx.calibration(direction, limit=int(opts.get("calibration_images", 64)))
    fp32 = _ov_model(ctx, direction, "openvino-int8")
    kw, ignored = {}, []
    if opts.get("keep_fp32_edges"):
        import onnx
        ignored = _ov_names(fp32, _edge_convs(onnx.load(str(fp32_onnx(ctx, direction)))))
        kw["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    with quiet(capture_output=True):
        q = nncf.quantize(fp32, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                          subset_size=len(calib), preset=getattr(nncf.QuantizationPreset, opts.get("preset", "MIXED")),
                          **kw)
    info = {"quantizer": f"nncf {nncf.__version__} post-training", "preset": opts.get("preset", "MIXED"),
            "calibration_images": len(calib), "calibration_folder": str(ctx.images_folder(direction)),
            "fp32_ops": ignored}
    key = ("openvino-int8", "_speed")
    if ctx.speed_check:
        if key not in ctx.extras:
            ctx.extras[key] = _ov_speed_check(ctx, direction, _ov_model(ctx, direction, "openvino"), q)
        sc = ctx.extras[key]
        info["speed_check"] = sc
        if sc["int8_ms"] >= sc["fp32_ms"]:
            raise FormatSkipped(f"int8 IR is not faster than fp32 on this CPU (measured {sc['int8_ms']:.2f} ms "
                                f"vs {sc['fp32_ms']:.2f} ms at batch 1, {ctx.size}x{ctx.size})")
    ctx.note("openvino-int8", direction, info=info)
    return _ov_save(ctx, q, direction, "openvino-int8", out_path)


def _ov_names(model, onnx_node_names: list[str]) -> list[str]:
    """OpenVINO op names that came from the given ONNX nodes (same name, or name-prefixed)."""
    ops = [op.get_friendly_name() for op in model.get_ops()]
    out = [o for o in ops if o in onnx_node_names]
    return out or [o for o in ops if any(o.startswith(n) for n in onnx_node_names)]


def export_tensorrt(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    from runtime import trt
    from runtime.backends import nvidia_gpu_present
    if not nvidia_gpu_present():
        raise FormatSkipped("no NVIDIA GPU on this machine")
    ok, why = trt.cuda_available()
    if not ok:
        raise FormatSkipped(why)
    base = fp32_onnx(ctx, direction)
    companions = []
    if base.parent.resolve() == ctx.out.resolve():  # the bundle's own onnx entry
        companions.append({"path": base, "role": "onnx-source", "shared": True})
    else:
        src = out_path.with_name(f"{direction}.trt-source.onnx")
        shutil.copyfile(base, src)
        companions.append({"path": src, "role": "onnx-source"})
    cache = ctx.out / "tensorrt.timing-cache"
    opts = FORMATS["tensorrt"].options
    info = trt.build_engine(base, out_path, size=ctx.size, max_batch=ctx.max_batch, input_name=ONNX_INPUT,
                            timing_cache=cache, workspace_gib=float(opts.get("workspace_gib", 4)))
    companions.append({"path": cache, "role": "timing-cache", "shared": True})
    ctx.note("tensorrt", direction, info=info, companions=companions,
             io={"inputs": [{"name": ONNX_INPUT, "shape": ["batch", 3, ctx.size, ctx.size], "dtype": "float32"}],
                 "outputs": [{"name": ONNX_OUTPUT, "shape": ["batch", 3, ctx.size, ctx.size], "dtype": "float32"}],
                 "dynamic_axes": {ONNX_INPUT: {"0": "batch"}, ONNX_OUTPUT: {"0": "batch"}}})
    return out_path


def export_torch(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    from safetensors.torch import save_file
    sd = {k: v.detach().float().contiguous().cpu() for k, v in ctx.net(direction).state_dict().items()}
    meta = dict(ctx.metadata(direction, "torch"), arch=json.dumps(ctx.config["arch"]))
    save_file(sd, str(out_path), metadata=meta)
    ctx.note("torch", direction, info={"arch": ctx.config["arch"], "dtype": "float32"},
             io={"inputs": [{"name": "x", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}],
                 "outputs": [{"name": "y", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}],
                 "dynamic_axes": {"x": {"0": "batch", "2": "height", "3": "width"},
                                  "y": {"0": "batch", "2": "height", "3": "width"}}})
    return out_path


def export_triton(ctx: ExportContext, direction: str, out_path: Path) -> Path:
    """A Triton model repository (export/triton.py); returns its JSON descriptor."""
    from .triton import export_triton as write
    return write(ctx, direction, out_path)


def exporter(name: str) -> Exporter:
    """The exporter of a format: the function its row in facesketch.formats names."""
    from facesketch.formats import get, resolve
    fmt = get(name)
    if not fmt.exporter:
        raise ValueError(f"format {name!r} names no exporter")
    return resolve(fmt.exporter)
