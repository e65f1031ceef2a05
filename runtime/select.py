"""backend="auto": time every loadable backend on this machine, pick the fastest.

The choice is cached as JSON in ``$FACESKETCH_CACHE`` (default
``~/.cache/facesketch``) under a key made of the bundle hash, this machine
(CPU, cores, GPUs) and the library versions, so a second load on the same
machine reuses it without timing anything, and any change (re-exported bundle,
upgraded onnxruntime, other GPU) measures again.

Timing: every candidate is loaded and warmed up, then the candidates run in
interleaved rounds (one call each per round) on the real input shape
(1 x 3 x S x S) and each one's median is kept. Interleaving spreads background
load evenly over the candidates on a busy machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facesketch import sysinfo

log = logging.getLogger("facesketch.runtime")
CACHE_FILE = "autoselect.json"


def cache_dir() -> Path:
    env = os.environ.get("FACESKETCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facesketch"


def machine_fingerprint() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": sysinfo.cpu_model(), "cores": os.cpu_count(), "affinity_cores": affinity,
            "gpus": [g.get("name") for g in sysinfo.gpus()], "libraries": sysinfo.library_versions()}


def selection_key(model_hash: str, candidates: list[str], device: str) -> str:
    blob = json.dumps({"model": model_hash, "machine": machine_fingerprint(),
                       "candidates": sorted(candidates), "device": device}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Selection:
    backend: str
    key: str
    cached: bool
    measured_ms: dict[str, float] = field(default_factory=dict)   # median ms at batch 1
    skipped: dict[str, str] = field(default_factory=dict)         # name -> why
    rounds: int = 0                                               # timed runs per backend now
    shape: list[int] = field(default_factory=list)
    when: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable backend cache %s (%s); it will be rewritten", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(path)
    data[key] = value
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def time_interleaved(runners: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray,
                     warmup: int = 2, rounds: int = 7, budget_s: float = 20.0,
                     min_rounds: int = 3, block: int = 2) -> dict[str, list[float]]:
    """Run each runner ``warmup`` times, then up to ``rounds`` interleaved timed rounds.

    In a round every runner gets a block of 1 + ``block`` consecutive calls; the
    first call of each block is untimed (it absorbs switching between engines'
    thread pools and caches) and the other ``block`` are timed. Rounds alternate
    the order. Stops after ``min_rounds`` once ``budget_s`` is spent.
    Returns name -> list of milliseconds.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn(x)
    samples: dict[str, list[float]] = {n: [] for n in runners}
    start = time.perf_counter()
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            runners[name](x)
            for _ in range(block):
                t = time.perf_counter()
                runners[name](x)
                samples[name].append((time.perf_counter() - t) * 1000.0)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return samples


def probe_input(size: int, batch: int = 1) -> np.ndarray:
    """A smooth, image-like input in [-1, 1] of the real shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    chans = [np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)]
    img = np.stack(chans)[None].repeat(batch, axis=0)
    return np.ascontiguousarray(np.clip(img, -1, 1), dtype=np.float32)


def choose(candidates: dict[str, Callable[[], Any]], model_hash: str, size: int, device: str = "auto",
           use_cache: bool = True, skipped: dict[str, str] | None = None,
           rounds: int = 7) -> tuple[Selection, dict[str, Any]]:
    """Pick the fastest of ``candidates`` (name -> factory returning a loaded Backend).

    Returns (selection, {name: loaded backend}) -- the loaded backends are handed back
    so the caller keeps the winner's session instead of loading it again. Factories
    that raise are recorded as skipped with the error and logged.
    """
    skipped = dict(skipped or {})
    key = selection_key(model_hash, list(candidates), device)
    path = cache_dir() / CACHE_FILE
    if use_cache:
        hit = _read_cache(path).get(key)
        if hit and hit.get("backend") in candidates:
            sel = Selection(backend=hit["backend"], key=key, cached=True,
                            measured_ms=hit.get("measured_ms", {}), skipped=hit.get("skipped", {}),
                            rounds=0, shape=hit.get("shape", []), when=hit.get("when", ""))
            log.info("backend auto: %s (cached choice from %s, %s)", sel.backend, sel.when, path)
            return sel, {}
    loaded: dict[str, Any] = {}
    for name, factory in candidates.items():
        try:
            loaded[name] = factory()
        except Exception as exc:  # any engine can fail to load; record it, keep the others
            skipped[name] = f"failed to load: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log.warning("backend %s failed to load: %s", name, exc)
    if not loaded:
        raise RuntimeError("no backend could run this model here: "
                           + "; ".join(f"{n}: {w}" for n, w in skipped.items()))
    x = probe_input(size)
    samples = time_interleaved({n: b.run for n, b in loaded.items()}, x, rounds=rounds)
    measured = {n: float(np.median(v)) for n, v in samples.items()}
    best = min(measured, key=measured.get)
    sel = Selection(backend=best, key=key, cached=False, measured_ms=measured, skipped=skipped,
                    rounds=len(next(iter(samples.values()))), shape=list(x.shape),
                    when=time.strftime("%Y-%m-%d %H:%M:%S"))
    log.info("backend auto: measured at batch 1, %dx%d, median of %d runs (interleaved blocks):",
             size, size, sel.rounds)
    for n, ms in sorted(measured.items(), key=lambda kv: kv[1]):
        log.info("  %-20s %9.2f ms%s", n, ms, "  <- chosen" if n == best else "")
    for n, why in skipped.items():
        log.info("  %-20s   skipped: %s", n, why)
    if use_cache:
        try:
            _write_cache(path, key, {k: v for k, v in sel.to_dict().items() if k not in ("key", "cached")})
        except OSError as exc:
            log.warning("could not write the backend cache %s: %s", path, exc)
    return sel, loaded
