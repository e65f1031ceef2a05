"""The one table of export formats, read by export, runtime, bench and the CLI.

Formats are always looked up by name (``FORMATS["onnx"]``), never by position.
Needs no torch: the runtime reads it on deployment boxes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Runner:
    """A runtime backend of a format: runtime.backends builds its BackendSpec from this."""
    name: str                   # backend name (--backend NAME)
    device: str                 # "cpu", "cuda" or "remote"
    precision: str              # compute precision: fp32, fp16, bf16, int8
    engine: str                 # "module:Class" of its runtime.backends.Backend, imported on use
    help: str
    options: dict = field(default_factory=dict, hash=False, compare=False)
    auto: bool = True           # a candidate for backend="auto" (False: only when named)


@dataclass(frozen=True)
class Format:
    """One row per format: everything export, runtime, bench and the CLI need of it.
    A new format is one row here plus its exporter function (``exporter``)."""
    name: str
    suffix: str                 # file (or folder) suffix inside a bundle
    device: str                 # "cpu", "cuda" or "cpu/cuda"
    packages: tuple[str, ...]   # import names needed to build and run it
    precision: str              # "fp32", "fp16", "int8", "mixed"
    floor_db: float             # parity floor (PSNR against torch fp32)
    help: str
    options: dict = field(default_factory=dict)
    exporter: str = ""          # "module:function" with the exporters' signature
    runners: tuple[Runner, ...] = ()

    def missing_packages(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]


def resolve(path: str):
    """A "module:attribute" import path -> the attribute (imported now)."""
    import importlib
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"not a module:attribute import path: {path!r}")
    return getattr(importlib.import_module(module), attr)


_ORT, _OV = "runtime.backends:OrtBackend", "runtime.backends:OpenVinoBackend"
_TRT, _TORCH = "runtime.backends:TensorRTBackend", "runtime.backends:TorchBackend"
_CPU_EP, _CUDA_EP = {"provider": "CPUExecutionProvider"}, {"provider": "CUDAExecutionProvider"}
_EXP = "export.exporters:"


# PSNR floors (against PyTorch fp32, peak 2 = the [-1, 1] output range), set from
# benchmarks/results/export_parity_amd-epyc-2c.json (python -m benchmarks.export_parity:
# 32 CUFS test images per direction, 128px, 3 blocks, checkpoints after 219 and 256
# training steps and an untrained one):
#   fp32 ONNX/Triton 129-134 dB (untrained 107-118), OpenVINO fp32 113-119 (90-103)
#     -> floor 60 dB, far below anything but a broken export.
#   fp16 graph on onnxruntime CPU 82-86 dB (untrained 66-68); that EP computes in fp32
#     on fp16-rounded weights. fp16 arithmetic (GPU, TensorRT) was not measured here;
#     PyTorch CPU half gave 78 dB, bf16 61 dB -> floor 40 dB.
#   int8: onnxruntime QDQ 38.2-45.6 dB (worst single image 37.3), OpenVINO/NNCF
#     38.2-46.7 (worst image 33.9) on the trained checkpoints -> floor 30 dB. Untrained
#     weights quantize to 28-30 dB and are refused: int8 of an untrained model is noise.
_TABLE = (
    Format("onnx", ".onnx", "cpu/cuda", ("onnx", "onnxruntime"), "fp32", 60.0,
           "ONNX fp32, dynamic batch and spatial size, opset 18, constant-folded",
           {"opset": 18}, _EXP + "export_onnx", (
               Runner("ort-cpu", "cpu", "fp32", _ORT, "onnxruntime CPU, fp32", _CPU_EP),
               Runner("ort-cuda", "cuda", "fp32", _ORT, "onnxruntime CUDA EP, fp32", _CUDA_EP),
               Runner("ort-trt", "cuda", "fp16", _ORT,
                      "onnxruntime TensorRT EP, fp16 (engine cached in the cache dir)",
                      {"provider": "TensorrtExecutionProvider"}))),
    Format("onnx-fp16", ".fp16.onnx", "cpu/cuda", ("onnx", "onnxruntime"), "fp16", 40.0,
           "ONNX fp16 weights/activations; InstanceNorm and output kept in fp32",
           {"keep_fp32": ("InstanceNormalization", "Tanh")}, _EXP + "export_onnx_fp16", (
               Runner("ort-cpu-fp16", "cpu", "fp16", _ORT, "onnxruntime CPU running the fp16 graph",
                      _CPU_EP),
               Runner("ort-cuda-fp16", "cuda", "fp16", _ORT, "onnxruntime CUDA EP, fp16 graph",
                      _CUDA_EP))),
    Format("onnx-int8", ".int8.onnx", "cpu", ("onnx", "onnxruntime"), "int8", 30.0,
           "ONNX static QDQ int8 for CPU, calibrated on real images of the input domain",
           {"calibration_images": 64, "per_channel": True, "reduce_range": False,
            "keep_fp32_edges": True, "calibrate_method": "Percentile"}, _EXP + "export_onnx_int8", (
               Runner("ort-cpu-int8", "cpu", "int8", _ORT, "onnxruntime CPU, static QDQ int8",
                      _CPU_EP),)),
    Format("openvino", ".xml", "cpu", ("openvino",), "fp32", 60.0,
           "OpenVINO IR fp32 (with its .bin)", {}, _EXP + "export_openvino", (
               Runner("openvino-cpu", "cpu", "fp32", _OV, "OpenVINO CPU plugin, fp32"),)),
    Format("openvino-int8", ".int8.xml", "cpu", ("openvino", "nncf"), "int8", 30.0,
           "OpenVINO IR int8 by NNCF post-training quantization on calibration images",
           {"calibration_images": 64, "preset": "MIXED", "keep_fp32_edges": True},
           _EXP + "export_openvino_int8", (
               Runner("openvino-cpu-int8", "cpu", "int8", _OV, "OpenVINO CPU plugin, NNCF int8"),)),
    Format("tensorrt", ".engine", "cuda", ("tensorrt",), "fp16", 40.0,
           "TensorRT 10 FP16 engine, batch profile 1..max-batch, norms in fp32",
           {"workspace_gib": 4}, _EXP + "export_tensorrt", (
               Runner("tensorrt", "cuda", "fp16", _TRT,
                      "TensorRT engine (rebuilt from the ONNX for another GPU/TensorRT)"),)),
    Format("triton", ".triton.json", "cuda", ("onnx", "onnxruntime"), "fp32", 60.0,
           "NVIDIA Triton model repository in BUNDLE/triton/ (ONNX + TensorRT plan where built)",
           {"instances": 1, "kind": "gpu", "max_queue_delay_us": 500, "workspace_bytes": 1 << 30},
           _EXP + "export_triton", (
               Runner("triton", "remote", "fp16", "runtime.triton:TritonBackend",
                      "NVIDIA Triton Inference Server over HTTP (needs --server; runtime/triton.py)",
                      {"timeout_s": 120}, auto=False),
               Runner("triton-repo-cpu", "cpu", "fp32", "runtime.triton:RepositoryOnnxBackend",
                      "the bundle's Triton repository ONNX on onnxruntime CPU (export check)",
                      auto=False))),
    Format("torch", ".safetensors", "cpu/cuda", ("torch", "safetensors"), "fp32", 60.0,
           "PyTorch eager module from safetensors (fp32; fp16/bf16 and channels_last on GPU)",
           {}, _EXP + "export_torch", (
               Runner("torch-cpu", "cpu", "fp32", _TORCH, "PyTorch eager on CPU, fp32"),
               Runner("torch-cuda", "cuda", "fp32", _TORCH, "PyTorch eager on CUDA, fp32"),
               Runner("torch-cuda-fp16", "cuda", "fp16", _TORCH,
                      "PyTorch eager on CUDA, fp16, channels_last", {"channels_last": True}),
               Runner("torch-cuda-bf16", "cuda", "bf16", _TORCH,
                      "PyTorch eager on CUDA, bf16, channels_last", {"channels_last": True}),
               Runner("torch-cuda-graph", "cuda", "fp16", _TORCH,
                      "PyTorch CUDA graphs (one per batch shape), fp16, channels_last",
                      {"channels_last": True, "cuda_graph": True}),
               Runner("torch-cuda-compile", "cuda", "fp16", _TORCH,
                      "torch.compile (max-autotune-no-cudagraphs), fp16, channels_last",
                      {"channels_last": True, "compile": True}))),
)

FORMATS: dict[str, Format] = {f.name: f for f in _TABLE}
DIRECTIONS = ("photo2sketch", "sketch2photo")
DOMAINS = ("photo", "sketch")
# Which generator of a CycleGAN checkpoint runs each direction.
# Paper names: G: photo->sketch (our G_A), F: sketch->photo (our G_B).
DIRECTION_GENERATOR = {"photo2sketch": "G_A", "sketch2photo": "G_B"}
SOURCE_DOMAIN = {"photo2sketch": "photo", "sketch2photo": "sketch"}


class UnknownFormatError(KeyError, ValueError):
    """A format name not in the table (a KeyError for lookups, a ValueError for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown format"


def register(fmt: Format) -> Format:
    """Add a format (a plugin's, or a test's) to the table; export, runtime, bench and
    the CLI see it at once (they all read FORMATS)."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} exists already")
    if not fmt.exporter:
        raise ValueError(f"format {fmt.name!r} names no exporter (module:function)")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    FORMATS.pop(name, None)


def get(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}") from None


def parse_list(spec: str | None) -> list[str]:
    """'all' or a comma list -> validated list of names (table order for 'all')."""
    if spec is None or spec.strip() in ("", "all"):
        return list(FORMATS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        get(n)
    return names


def help_table() -> str:
    width = max(len(n) for n in FORMATS)
    lines = [f"  {'name':<{width}}  {'device':<8} {'precision':<9} needs"]
    for f in FORMATS.values():
        lines.append(f"  {f.name:<{width}}  {f.device:<8} {f.precision:<9} "
                     f"{'+'.join(f.packages):<22} {f.help}")
    return "\n".join(lines)
