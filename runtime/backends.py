"""Inference backends: one interface, one registry, each says why it cannot run.

A backend runs one engine file (one direction) on one device:

    b = spec.create(files, entry)        # files from Bundle.files_for(entry)
    ok, why = b.available()               # packages / hardware present?
    b.load(); b.warmup(); y = b.run(x)    # x, y: float32 NCHW in [-1, 1]

Backends are looked up by name in ``BACKENDS`` (``ort-cpu``, ``openvino-cpu``,
``tensorrt``, ``torch-cpu``, ...); each names the bundle format it runs.
Nothing here imports torch, onnxruntime, openvino or tensorrt at module level:
each backend imports its engine inside ``load``.

Threads: engines use their default intra-op thread count (all cores) unless
FACESKETCH_THREADS is set; onnxruntime does not spin between calls.

Thread safety: every backend instance owns one session and one lock; ``run``
holds the lock for the engine call, so concurrent callers of the same backend
are serialised (ORT/OpenVINO/TensorRT contexts are not all safe to share) and
different backends/directions run in parallel. Batch requests (``translate_batch``)
to use the engine well under concurrency.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from facesketch.formats import FORMATS, resolve

from .bundle import BundleError

log = logging.getLogger("facesketch.runtime")


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (package, hardware or engine missing)."""


def nvidia_gpu_present() -> bool:
    """Cheap check (no CUDA initialisation): is an NVIDIA driver/GPU visible?"""
    return (os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")
            or shutil.which("nvidia-smi") is not None)


def threads() -> int | None:
    """Intra-op threads for every engine: $FACESKETCH_THREADS, else each engine's default."""
    v = os.environ.get("FACESKETCH_THREADS", "").strip()
    if not v:
        return None
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"FACESKETCH_THREADS must be a positive integer, got {v!r}")
    return int(v)


def _missing(*packages: str) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def check_metadata(meta: dict[str, str], entry: dict[str, Any], where: str) -> None:
    """The engine file's own metadata must agree with its manifest entry."""
    for key in ("direction", "format"):
        got = meta.get(key)
        if got is None:
            raise BundleError(f"{where} carries no facesketch {key} metadata; not a facesketch export")
        if got != str(entry[key]):
            raise BundleError(f"{where} says {key}={got!r} but the manifest says {entry[key]!r}; "
                              "the bundle's files were swapped or mislabelled")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    format: str        # bundle format it runs (facesketch.formats name)
    device: str        # "cpu" or "cuda"
    precision: str     # compute precision: fp32, fp16, bf16, int8
    engine: str        # "module:Class" of its Backend (facesketch.formats Runner.engine)
    help: str
    options: dict = field(default_factory=dict, hash=False, compare=False)
    auto: bool = True  # a candidate for backend="auto" (False: only when named)

    @property
    def cls(self) -> type["Backend"]:
        return resolve(self.engine)   # "module:Class", imported on first use

    def available(self) -> tuple[bool, str]:
        return self.cls.check(self)

    def create(self, files: dict[str, Path], entry: dict[str, Any], **kw: Any) -> "Backend":
        return self.cls(self, files, entry, **kw)


class Backend:
    """Base class: subclasses implement check, _load, _run (and maybe close).

    ``_run`` is called under a per-backend lock unless the class sets
    ``serialize = False`` (a remote server that takes concurrent calls itself).
    """

    serialize = True

    def __init__(self, spec: BackendSpec, files: dict[str, Path], entry: dict[str, Any]):
        self.spec = spec
        self.files = files
        self.entry = entry
        self.image_size = int(entry.get("image_size", 0)) or None
        self.loaded = False
        self._lock = threading.Lock()

    name = property(lambda self: self.spec.name)
    format = property(lambda self: self.spec.format)
    device = property(lambda self: self.spec.device)
    precision = property(lambda self: self.spec.precision)

    @classmethod
    def check(cls, spec: BackendSpec) -> tuple[bool, str]:
        raise NotImplementedError

    def available(self) -> tuple[bool, str]:
        return self.check(self.spec)

    def load(self) -> "Backend":
        with self._lock:
            if not self.loaded:
                ok, why = self.check(self.spec)
                if not ok:
                    raise BackendUnavailable(f"{self.name}: {why}")
                self._load()
                self.loaded = True
        return self

    def warmup(self, batch: int = 1, runs: int = 2) -> None:
        s = self.image_size or 128
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)
        for _ in range(runs):
            self.run(x)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not self.loaded:
            self.load()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected an N x 3 x H x W batch, got shape {x.shape}")
        with self._lock if self.serialize else contextlib.nullcontext():
            y = self._run(x)
        return np.asarray(y, dtype=np.float32)

    def close(self) -> None:
        self.loaded = False

    # subclass hooks
    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------ onnxruntime
class OrtBackend(Backend):
    @classmethod
    def check(cls, spec):
        if _missing("onnxruntime"):
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        provider = spec.options["provider"]
        if provider != "CPUExecutionProvider":
            if not nvidia_gpu_present():
                return False, "no NVIDIA GPU visible"
            import onnxruntime as ort
            if provider not in ort.get_available_providers():
                return False, (f"onnxruntime has no {provider} (install onnxruntime-gpu"
                               + (" and tensorrt" if "Tensorrt" in provider else "") + ")")
        return True, ""

    def _providers(self) -> list:
        provider = self.spec.options["provider"]
        if provider == "TensorrtExecutionProvider":
            from .select import cache_dir
            s, mb = self.image_size or 128, int(self.entry.get("max_batch", 32))
            name = self.entry.get("inputs", [{}])[0].get("name", "input")
            opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir() / "ort-trt"),
                    "trt_timing_cache_enable": True,
                    "trt_profile_min_shapes": f"{name}:1x3x{s}x{s}",
                    "trt_profile_opt_shapes": f"{name}:1x3x{s}x{s}",
                    "trt_profile_max_shapes": f"{name}:{mb}x3x{s}x{s}"}
            return [(provider, opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
        if provider == "CUDAExecutionProvider":
            return [(provider, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]
        return [provider]

    def _load(self):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # No busy-waiting between calls: the server shares the CPU with decoding and
        # other requests, and spinning pools distort timings of the other engines.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads():
            so.intra_op_num_threads = threads()
        path = self.files["model"]
        sess = ort.InferenceSession(str(path), so, providers=self._providers())
        want = self.spec.options["provider"]
        if sess.get_providers()[0] != want:
            raise BackendUnavailable(f"{self.name}: onnxruntime fell back to {sess.get_providers()[0]} "
                                     f"(no working {want} here)")
        meta = {k.removeprefix("facesketch."): v
                for k, v in sess.get_modelmeta().custom_metadata_map.items()}
        check_metadata(meta, self.entry, str(path))
        self._sess = sess
        self._in = sess.get_inputs()[0].name
        self._out = sess.get_outputs()[0].name

    def _run(self, x):
        return self._sess.run([self._out], {self._in: x})[0]

    def close(self):
        self._sess = None
        super().close()


# ------------------------------------------------------------------ openvino
class OpenVinoBackend(Backend):
    @classmethod
    def check(cls, spec):
        if _missing("openvino"):
            return False, "openvino is not installed (pip install openvino)"
        return True, ""

    def _load(self):
        import openvino as ov
        core = ov.Core()
        path = self.files["model"]
        model = core.read_model(str(path), str(self.files["weights"]))
        meta = {}
        for key in ("direction", "format"):
            if model.has_rt_info(["facesketch", key]):
                meta[key] = model.get_rt_info(["facesketch", key]).astype(str)
        check_metadata(meta, self.entry, str(path))
        s = self.image_size
        if s:  # batch stays dynamic, spatial size is fixed: faster CPU kernels
            model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, s, s])})
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads():
            config["INFERENCE_NUM_THREADS"] = threads()
        if self.spec.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # no silent bf16 on AMX/AVX512-BF16 CPUs
        self._compiled = core.compile_model(model, "CPU", config)
        self._req = self._compiled.create_infer_request()

    def _run(self, x):
        self._req.infer({0: x})
        return self._req.get_output_tensor(0).data.copy()

    def close(self):
        self._req = self._compiled = None
        super().close()


# ------------------------------------------------------------------ tensorrt
class TensorRTBackend(Backend):
    @classmethod
    def check(cls, spec):
        if _missing("tensorrt"):
            return False, "tensorrt is not installed (pip install tensorrt; needs an NVIDIA GPU)"
        if not nvidia_gpu_present():
            return False, "no NVIDIA GPU visible"
        from . import trt
        return trt.cuda_available()

    def _load(self):
        from . import trt
        engine_path = self.files["model"]
        info = self.entry.get("info", {})
        here = trt.engine_info()
        same = (info.get("tensorrt_version") == here["tensorrt_version"]
                and info.get("compute_capability") == here["compute_capability"])
        if not same:
            onnx = self.files.get("onnx-source")
            if onnx is None:
                raise BundleError(f"{engine_path} was built for TensorRT {info.get('tensorrt_version')} "
                                  f"on compute capability {info.get('compute_capability')}, this machine has "
                                  f"{here['tensorrt_version']} / {here['compute_capability']}, and the "
                                  "bundle holds no ONNX to rebuild it from")
            engine_path = trt.rebuilt_engine(onnx, self.entry, log=log)
        self._runner = trt.TrtRunner(engine_path, max_batch=int(self.entry.get("max_batch", 32)))

    def _run(self, x):
        return self._runner.run(x)

    def close(self):
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None:
            runner.close()
        super().close()


# ------------------------------------------------------------------ torch
class TorchBackend(Backend):
    """The generator as a PyTorch module (needs torch; imported here only)."""

    def __init__(self, spec, files, entry, module: Any = None, arch: dict | None = None):
        super().__init__(spec, files, entry)
        self._module = module
        self._arch = arch or entry.get("info", {}).get("arch")

    @classmethod
    def check(cls, spec):
        miss = _missing("torch", "safetensors")
        if miss:
            return False, f"{' and '.join(miss)} not installed (pip install torch safetensors)"
        if spec.device == "cuda" and not nvidia_gpu_present():
            return False, "no NVIDIA GPU visible"
        return True, ""

    def _load(self):
        import torch
        from training.networks import generator_from_arch
        if threads() and self.spec.device == "cpu":
            torch.set_num_threads(threads())  # process-wide: torch has one intra-op pool
        if self.spec.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"{self.name}: torch {torch.__version__} sees no CUDA device")
        if self.spec.device == "cuda" and self.spec.precision == "fp32":
            # fp32 means fp32: no TF32 convolutions (process-wide cuDNN setting)
            torch.backends.cudnn.allow_tf32 = False
        net = self._module
        if net is None:
            from safetensors import safe_open
            from safetensors.torch import load_file
            path = self.files["model"]
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            check_metadata(meta, self.entry, str(path))
            arch = json.loads(meta["arch"]) if "arch" in meta else self._arch
            if not arch:
                raise BundleError(f"{path}: no architecture (arch) in its metadata or manifest entry")
            net = generator_from_arch(arch)
            net.load_state_dict(load_file(str(path)), strict=True)
        import copy
        net = copy.deepcopy(net) if self.spec.device == "cuda" else net
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.spec.precision]
        self._device = torch.device("cuda" if self.spec.device == "cuda" else "cpu")
        self._dtype = dtype
        self._cl = bool(self.spec.options.get("channels_last"))
        net = net.to(self._device, dtype).eval()
        if self._cl:
            net = net.to(memory_format=torch.channels_last)
        if self.spec.options.get("compile"):
            net = torch.compile(net, mode=self.spec.options.get("compile_mode", "max-autotune-no-cudagraphs"),
                                dynamic=False)
        self._net = net
        self._graphs: dict[tuple, tuple] = {}

    def _to_input(self, x):
        import torch
        t = torch.from_numpy(x).to(self._device, self._dtype, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self._cl else t

    def _graph(self, t):
        import torch
        key = tuple(t.shape)
        if key not in self._graphs:
            static_in = t.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):
                    self._net(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                static_out = self._net(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(t)
        graph.replay()
        return static_out

    def _run(self, x):
        import torch
        t = self._to_input(x)
        with torch.inference_mode() if not self.spec.options.get("cuda_graph") else torch.no_grad():
            y = self._graph(t) if self.spec.options.get("cuda_graph") else self._net(t)
            return y.float().cpu().numpy()

    def close(self):
        self._net = None
        self._graphs = {}
        super().close()


class _Backends(Mapping):
    """name -> BackendSpec, derived from the format table (facesketch.formats: each
    Format row lists its runners), so a format registered later is seen at once."""

    def _specs(self) -> dict[str, BackendSpec]:
        key = tuple((f.name, f.runners) for f in FORMATS.values())
        if getattr(self, "_key", None) != key:
            self._cache = {r.name: BackendSpec(r.name, f.name, r.device, r.precision, r.engine,
                                               r.help, dict(r.options), r.auto)
                           for f in FORMATS.values() for r in f.runners}
            self._key = key
        return self._cache

    def __getitem__(self, name: str) -> BackendSpec:
        return self._specs()[name]

    def __iter__(self):
        return iter(self._specs())

    def __len__(self) -> int:
        return len(self._specs())


BACKENDS: Mapping[str, BackendSpec] = _Backends()


def get(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


def for_format(fmt: str, device: str = "auto", auto_only: bool = False) -> list[BackendSpec]:
    """Backends that run ``fmt`` (CPU ones first), filtered by device (and auto candidacy)."""
    specs = [s for s in BACKENDS.values() if s.format == fmt and device in ("auto", s.device)
             and (s.auto or not auto_only)]
    return sorted(specs, key=lambda s: s.device != "cpu")


def verifier(fmt: str) -> tuple[BackendSpec | None, str]:
    """The first backend able to run ``fmt`` here (to check parity at export), or why none."""
    reasons = []
    for spec in for_format(fmt):
        ok, why = spec.available()
        if ok:
            return spec, ""
        reasons.append(f"{spec.name}: {why}")
    return None, "; ".join(reasons) or f"no backend runs {fmt}"


def help_table() -> str:
    width = max(len(n) for n in BACKENDS)
    return "\n".join(f"  {s.name:<{width}}  {s.format:<13} {s.device:<5} {s.precision:<5} {s.help}"
                     for s in BACKENDS.values())
