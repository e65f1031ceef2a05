"""Describe the machine a measurement ran on, and measure its matmul peak.

Benchmarks report ratios measured in one run (achieved FLOP/s against the
machine's measured fp32 matmul throughput), since absolute times on shared
machines are noisy.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = ("facesketch", "numpy", "pillow", "torch", "onnx", "onnxruntime", "onnxruntime-gpu",
             "openvino", "nncf", "tensorrt", "flask", "waitress", "safetensors")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names=LIBRARIES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi reports them (empty where there is none)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        res = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in res.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            out.append(dict(zip(("name", "driver", "memory", "compute_capability"), parts)))
    return out


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpus(),
        "libraries": library_versions(),
    }


def numpy_matmul_peak(n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 GEMM FLOP/s of numpy's BLAS on this machine (best of repeats)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > deadline:
            break
    return 2.0 * n ** 3 / best


def write_result(result: dict[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)
    return p
