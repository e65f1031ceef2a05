"""The one table of export formats, read by export, runtime, bench and the CLI.

Formats are always looked up by name (``FORMATS["onnx"]``), never by position.
Needs no torch: the runtime reads it on deployment boxes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str                 # file (or folder) suffix inside a bundle
    device: str                 # "cpu", "cuda" or "cpu/cuda"
    packages: tuple[str, ...]   # import names needed to build and run it
    precision: str              # "fp32", "fp16", "int8", "mixed"
    floor_db: float             # parity floor (PSNR against torch fp32)
    help: str
    options: dict = field(default_factory=dict)

    def missing_packages(self) -> list[str]:
        return [p for p in self.packages if importlib.util.find_spec(p) is None]


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
           {"opset": 18}),
    Format("onnx-fp16", ".fp16.onnx", "cpu/cuda", ("onnx", "onnxruntime"), "fp16", 40.0,
           "ONNX fp16 weights/activations; InstanceNorm and output kept in fp32",
           {"keep_fp32": ("InstanceNormalization", "Tanh")}),
    Format("onnx-int8", ".int8.onnx", "cpu", ("onnx", "onnxruntime"), "int8", 30.0,
           "ONNX static QDQ int8 for CPU, calibrated on real images of the input domain",
           {"calibration_images": 64, "per_channel": True, "reduce_range": False,
            "keep_fp32_edges": True, "calibrate_method": "Percentile"}),
    Format("openvino", ".xml", "cpu", ("openvino",), "fp32", 60.0,
           "OpenVINO IR fp32 (with its .bin)", {}),
    Format("openvino-int8", ".int8.xml", "cpu", ("openvino", "nncf"), "int8", 30.0,
           "OpenVINO IR int8 by NNCF post-training quantization on calibration images",
           {"calibration_images": 64, "preset": "MIXED", "keep_fp32_edges": True}),
    Format("tensorrt", ".engine", "cuda", ("tensorrt",), "fp16", 40.0,
           "TensorRT 10 FP16 engine, batch profile 1..max-batch, norms in fp32",
           {"workspace_gib": 4}),
    Format("triton", ".triton.json", "cuda", ("onnx", "onnxruntime"), "fp32", 60.0,
           "NVIDIA Triton model repository in BUNDLE/triton/ (ONNX + TensorRT plan where built)",
           {"instances": 1, "kind": "gpu", "max_queue_delay_us": 500, "workspace_bytes": 1 << 30}),
    Format("torch", ".safetensors", "cpu/cuda", ("torch", "safetensors"), "fp32", 60.0,
           "PyTorch eager module from safetensors (fp32; fp16/bf16 and channels_last on GPU)",
           {}),
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
