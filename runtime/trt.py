"""TensorRT 10: build an engine from the ONNX, and run one (cuda-python for memory).

Used by export (building the bundle's engine) and by the runtime (running it,
or rebuilding it from the bundle's ONNX when the engine was made for another
TensorRT version or GPU: a serialized engine is only valid for the TensorRT
version and compute capability that built it). Torch-free.

Build recipe: explicit-batch network parsed from the ONNX, FP16 enabled,
InstanceNorm (TensorRT NORMALIZATION layers) constrained to fp32 with
OBEY_PRECISION_CONSTRAINTS, one optimization profile over batch 1..max_batch
at the bundle's image size, and a timing cache that is loaded and saved again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("facesketch.runtime")


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _call(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def cuda_available() -> tuple[bool, str]:
    if importlib.util.find_spec("cuda") is None:
        return False, "cuda-python is not installed (pip install cuda-python)"
    try:
        count = _call(_cudart().cudaGetDeviceCount())
    except (RuntimeError, ImportError) as exc:
        return False, f"CUDA is not usable: {exc}"
    return (True, "") if count > 0 else (False, "CUDA reports no device")


def engine_info() -> dict[str, str]:
    """TensorRT version and GPU of this machine (what an engine is valid for)."""
    import tensorrt as trt
    cudart = _cudart()
    dev = _call(cudart.cudaGetDevice())
    prop = _call(cudart.cudaGetDeviceProperties(dev))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt_version": trt.__version__, "compute_capability": f"{prop.major}.{prop.minor}",
            "gpu": name.strip("\x00 ")}


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, size: int,
                 max_batch: int, input_name: str = "input", fp16: bool = True,
                 timing_cache: str | os.PathLike | None = None, workspace_gib: float = 4.0) -> dict:
    """Build and serialize an engine; returns build info for the manifest."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    kept = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                kept += 1

    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 3, size, size), (1, 3, size, size), (max_batch, 3, size, size))
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s was made on another device; starting a fresh one", timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    if timing_cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    info = engine_info()
    info.update({"fp16": fp16, "fp32_normalization_layers": kept, "profile_batch": [1, 1, max_batch],
                 "image_size": size, "workspace_gib": workspace_gib})
    return info


def rebuilt_engine(onnx_path: Path, entry: dict[str, Any], log=log) -> Path:
    """An engine for this machine built from ``onnx_path`` (cached in the cache dir)."""
    from .select import cache_dir
    here = engine_info()
    key = hashlib.sha256(f"{entry.get('sha256')}|{here}|{entry.get('max_batch')}|"
                         f"{entry.get('image_size')}".encode()).hexdigest()[:24]
    folder = cache_dir() / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / f"{key}.engine"
    if not engine.is_file():
        log.info("rebuilding the TensorRT engine for %s from %s (bundle engine was built for "
                 "TensorRT %s, compute capability %s)", here, onnx_path,
                 entry.get("info", {}).get("tensorrt_version"),
                 entry.get("info", {}).get("compute_capability"))
        tmp = engine.with_suffix(f".tmp{os.getpid()}")
        build_engine(onnx_path, tmp, size=int(entry["image_size"]), max_batch=int(entry["max_batch"]),
                     input_name=entry["inputs"][0]["name"],
                     timing_cache=folder / f"timing-{here['compute_capability']}-"
                                           f"{here['tensorrt_version']}.cache")
        os.replace(tmp, engine)
    return engine


class TrtRunner:
    """Deserialize an engine and run fp32 NCHW batches through it."""

    def __init__(self, engine_path: Path, max_batch: int):
        import tensorrt as trt
        self._cudart = cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.in_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.out_name = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.max_batch = max_batch
        self.stream = _call(cudart.cudaStreamCreate())
        self._cap = 0
        self._d_in = self._d_out = None

    def _ensure(self, nbytes_in: int, nbytes_out: int) -> None:
        need = max(nbytes_in, nbytes_out)
        if need <= self._cap:
            return
        self._free()
        self._d_in = _call(self._cudart.cudaMalloc(need))
        self._d_out = _call(self._cudart.cudaMalloc(need))
        self._cap = need

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] > self.max_batch:
            raise ValueError(f"batch {x.shape[0]} exceeds the engine's profile maximum {self.max_batch}")
        cudart = self._cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.in_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        out = np.empty(out_shape, dtype=np.float32)
        self._ensure(x.nbytes, out.nbytes)
        _call(cudart.cudaMemcpyAsync(self._d_in, x, x.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.in_name, int(self._d_in))
        self.context.set_tensor_address(self.out_name, int(self._d_out))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _call(cudart.cudaMemcpyAsync(out, self._d_out, out.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _call(cudart.cudaStreamSynchronize(self.stream))
        return out

    def _free(self) -> None:
        for ptr in (self._d_in, self._d_out):
            if ptr is not None:
                _call(self._cudart.cudaFree(ptr))
        self._d_in = self._d_out = None
        self._cap = 0

    def close(self) -> None:
        self._free()
        if self.stream is not None:
            _call(self._cudart.cudaStreamDestroy(self.stream))
            self.stream = None
        self.context = self.engine = self._runtime = None
