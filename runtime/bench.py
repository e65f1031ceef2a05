"""facesketch bench: every backend of a bundle on this machine, measured in one run.

Per backend: file size, parity PSNR (from the manifest: real images against
PyTorch fp32 at export), p50/p95 latency at batch 1, throughput at each batch
size, achieved GFLOP/s (conv FLOPs counted analytically, runtime.flops) as a
share of numpy's fp32 matmul throughput measured in the same run, and the
backend backend="auto" picks (timed afresh, cache bypassed). Latency rounds are
interleaved across backends so background load hits them all alike.
Torch-free unless the bundle's torch backend is benchmarked.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from facesketch import sysinfo
from facesketch.metrics import model_psnr

from . import backends as B
from . import select
from .bundle import Bundle
from .flops import generator_flops

log = logging.getLogger("facesketch.bench")


def machine_tag(machine: dict[str, Any] | None = None) -> str:
    m = machine or sysinfo.machine()
    cpu = re.sub(r"[^a-z0-9]+", "-", str(m.get("cpu", "cpu")).lower()).strip("-")[:32]
    tag = f"{cpu}-{m.get('affinity_cores') or m.get('cores')}c"
    if m.get("gpus"):
        tag += "-" + re.sub(r"[^a-z0-9]+", "-", m["gpus"][0]["name"].lower()).strip("-")[:32]
    return tag


def _wanted(spec: B.BackendSpec, only: list[str] | None) -> bool:
    return not only or spec.name in only or spec.format in only


def _check_names(backends: Iterable[str] | None) -> list[str] | None:
    only = [b.strip() for b in backends if b.strip()] if backends else None
    if only:
        known = set(B.BACKENDS) | {s.format for s in B.BACKENDS.values()}
        bad = [b for b in only if b not in known]
        if bad:
            raise ValueError(f"unknown backend(s) {', '.join(bad)}; known: {', '.join(B.BACKENDS)} "
                             "(or a format name)")
    return only


def _load_backends(bundle: Bundle, device: str, only: list[str] | None,
                   echo: Callable[[str], None]) -> tuple[dict, dict, dict]:
    """(loaded backends, skipped name -> reason, load seconds) for the bundle's formats."""
    from .translator import BundleSource
    src, probe_dir = BundleSource(bundle), bundle.directions[0]
    loaded, skipped, load_s = {}, {}, {}
    for fmt in bundle.formats:
        for spec in B.for_format(fmt, device):
            if not _wanted(spec, only) or not (spec.auto or (only and spec.name in only)):
                continue
            ok, why = spec.available()
            if not ok:
                skipped[spec.name] = why
                continue
            t = time.perf_counter()
            try:
                loaded[spec.name] = src.create(spec, probe_dir).load()
            except Exception as exc:  # report it as skipped, bench the others
                skipped[spec.name] = f"failed to load: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                continue
            load_s[spec.name] = time.perf_counter() - t
    if not loaded:
        raise RuntimeError("nothing to benchmark: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for name in skipped:
        echo(f"skipped {name}: {skipped[name]}")
    return loaded, skipped, load_s


def _throughput(loaded: dict, bundle: Bundle, batch_sizes: list[int],
                echo: Callable[[str], None]) -> dict[str, dict[int, float]]:
    thr: dict[str, dict[int, float]] = {n: {} for n in loaded}
    for b in batch_sizes:
        if b > bundle.max_batch:
            echo(f"batch {b} exceeds the bundle's max batch {bundle.max_batch}; skipped")
            continue
        xb = select.probe_input(bundle.image_size, b)
        reps = max(3, min(10, math.ceil(16 / b)))
        smp = select.time_interleaved({n: bk.run for n, bk in loaded.items()}, xb, warmup=1,
                                      rounds=reps, budget_s=60.0, min_rounds=2)
        for n, v in smp.items():
            thr[n][b] = b / (float(np.median(v)) / 1000.0)
    return thr


def _row(n: str, bk: Any, bundle: Bundle, lat: list[float], thr: dict[int, float], load_s: float,
         flops: int | None, ref: tuple[str | None, Any, Any]) -> dict[str, Any]:
    spec = B.BACKENDS[n]
    entry = bundle.entry(spec.format, bundle.directions[0])
    par = entry.get("parity", {})
    v = np.asarray(lat)
    p50, p95 = float(np.percentile(v, 50)), float(np.percentile(v, 95))
    ref_name, ref_out, x1 = ref
    live = None
    if ref_out is not None and n != ref_name:
        live = round(model_psnr(bk.run(x1), ref_out), 2)
    best_thr = max(thr.values()) if thr else 1000.0 / p50
    return {
        "backend": n, "format": spec.format, "device": spec.device, "precision": spec.precision,
        "file_mb": round((entry.get("bytes", 0) + sum(c.get("bytes", 0) for c in entry.get("companions", [])
                                                     if c.get("role") != "onnx-source")) / 1e6, 2),
        "parity_psnr_db": par.get("psnr_db"), "parity_backend": par.get("backend"),
        "live_psnr_db_vs_" + (ref_name or "none"): live,
        "load_s": round(load_s, 3),
        "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "samples": len(v),
        "throughput_img_s": {str(b): round(t, 2) for b, t in thr.items()},
        "gflops_batch1": round(flops / (p50 / 1000.0) / 1e9, 2) if flops else None,
        "gflops_best": round(flops * best_thr / 1e9, 2) if flops else None,
        "peak_share_batch1": None, "peak_share_best": None,  # filled in once the peak is known
    }


def _targets(rows: list[dict[str, Any]], pick_name: str) -> dict[str, Any]:
    fastest = rows[0]
    pick = next(r for r in rows if r["backend"] == pick_name)
    fast30 = [r for r in rows if (r["parity_psnr_db"] or 0) >= 30.0]
    torch_row = next((r for r in rows if r["backend"] == "torch-cpu"), None)
    targets = {
        "auto_pick": pick_name, "auto_pick_p50_ms": pick["p50_ms"], "fastest": fastest["backend"],
        "fastest_p50_ms": fastest["p50_ms"],
        "auto_vs_fastest": round(pick["p50_ms"] / fastest["p50_ms"], 3),
        "auto_within_10pct": pick["p50_ms"] <= 1.10 * fastest["p50_ms"],
    }
    if fast30 and torch_row:
        targets.update({"fastest_30db": fast30[0]["backend"], "torch_eager_fp32_p50_ms": torch_row["p50_ms"],
                        "speedup_vs_torch_eager": round(torch_row["p50_ms"] / fast30[0]["p50_ms"], 3),
                        "speedup_at_least_2x": torch_row["p50_ms"] >= 2.0 * fast30[0]["p50_ms"]})
    return targets


def run_bench(model: str | Path, backends: Iterable[str] | None = None,
              batch_sizes: Iterable[int] = (1, 8), json_out: str | Path | None = None,
              runs: int = 20, device: str = "auto", echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every loadable backend of a bundle: latency at batch 1 (interleaved rounds),
    throughput per batch size, parity, achieved FLOP/s against the matmul peak measured
    in the same run, and the auto-selection's pick; a table on ``echo``, JSON on disk."""
    only = _check_names(backends)
    bundle = Bundle.load(model)
    size, probe_dir = bundle.image_size, bundle.directions[0]
    flops = generator_flops(bundle.arch(), size) if bundle.arch() else None
    batch_sizes = sorted({int(b) for b in batch_sizes if int(b) >= 1})
    # fp32 matmul peak, measured before any engine is loaded (no idle engine threads) and
    # again at the end; the better of the two is the machine's peak in this run.
    peak_first = sysinfo.numpy_matmul_peak(seconds=2.0)
    loaded, skipped, load_s = _load_backends(bundle, device, only, echo)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    x1 = select.probe_input(size)
    lat = select.time_interleaved({n: b.run for n, b in loaded.items()}, x1, warmup=3,
                                  rounds=runs, budget_s=max(30.0, runs * 2.0), min_rounds=min(runs, 5))
    ref_name = next((n for n in ("torch-cpu", "ort-cpu", "openvino-cpu", "torch-cuda") if n in loaded), None)
    ref = (ref_name, loaded[ref_name].run(x1) if ref_name else None, x1)
    thr = _throughput(loaded, bundle, batch_sizes, echo)
    rows = sorted((_row(n, bk, bundle, lat[n], thr[n], load_s[n], flops, ref) for n, bk in loaded.items()),
                  key=lambda r: r["p50_ms"])
    sel, _ = select.choose({n: (lambda b=b: b) for n, b in loaded.items()}, bundle.hash, size, device,
                           use_cache=False, skipped=skipped)
    for b in loaded.values():
        b.close()
    peak_last = sysinfo.numpy_matmul_peak(seconds=2.0)
    peak = max(peak_first, peak_last)
    for r in rows:
        if flops:
            r["peak_share_batch1"] = round(r["gflops_batch1"] * 1e9 / peak, 4)
            r["peak_share_best"] = round(r["gflops_best"] * 1e9 / peak, 4)
    result = {
        "kind": "facesketch-bench", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": sysinfo.machine(), "matmul_peak_gflops": round(peak / 1e9, 2),
        "matmul_peak_gflops_start_end": [round(peak_first / 1e9, 2), round(peak_last / 1e9, 2)],
        "load_average": {"before": load_before,
                         "after": os.getloadavg() if hasattr(os, "getloadavg") else None,
                         "note": "1/5/15-minute load averages; above the core count other work "
                                 "shared the CPU during the run"},
        "threads": os.environ.get("FACESKETCH_THREADS") or "engine defaults",
        "model": {"bundle": str(bundle.root), "hash": bundle.hash, "image_size": size,
                  "arch": bundle.arch(), "flops_per_image": flops, "direction": probe_dir,
                  "checkpoint_sha256": bundle.manifest.get("source", {}).get("checkpoint_sha256"),
                  "trained_steps": (bundle.manifest.get("source", {}).get("progress") or {}).get("global_step")},
        "method": {"latency": f"batch 1, {runs} interleaved rounds after 3 warm-ups, p50/p95",
                   "throughput": "median of interleaved rounds per batch size",
                   "flops": "2 x conv MACs, analytic (runtime.flops)", "peak": "numpy fp32 GEMM 1024^3"},
        "backends": rows, "skipped": skipped, "auto": sel.to_dict(), "targets": _targets(rows, sel.backend),
    }
    echo(format_table(result))
    if json_out is not None:
        path = sysinfo.write_result(result, json_out)
        echo(f"results: {path}")
        result["json"] = str(path)
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = result["backends"]
    bs = sorted({int(b) for r in rows for b in r["throughput_img_s"]})
    head = (f"{'backend':<20} {'prec':<5} {'MB':>6} {'PSNR dB':>8} {'p50 ms':>8} {'p95 ms':>8} "
            + " ".join(f"{'img/s@' + str(b):>9}" for b in bs) + f" {'GFLOP/s':>8} {'%peak':>6}")
    lines = [f"model {result['model']['bundle']} ({result['model']['image_size']}px, "
             f"{(result['model']['flops_per_image'] or 0) / 1e9:.2f} GFLOP/image); "
             f"numpy fp32 matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s", head, "-" * len(head)]
    for r in rows:
        psnr = r["parity_psnr_db"]
        lines.append(
            f"{r['backend']:<20} {r['precision']:<5} {r['file_mb']:>6.1f} "
            f"{(f'{psnr:.1f}' if psnr is not None else '-'):>8} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            + " ".join(f"{r['throughput_img_s'].get(str(b), float('nan')):>9.1f}" for b in bs)
            + f" {r['gflops_best'] or 0:>8.1f} {100 * (r['peak_share_best'] or 0):>5.1f}%")
    t = result["targets"]
    lines.append(f"auto picks {t['auto_pick']} ({t['auto_pick_p50_ms']:.2f} ms; fastest {t['fastest']} "
                 f"{t['fastest_p50_ms']:.2f} ms; ratio {t['auto_vs_fastest']:.2f})")
    if "speedup_vs_torch_eager" in t:
        lines.append(f"fastest at >= 30 dB: {t['fastest_30db']}, {t['speedup_vs_torch_eager']:.2f}x "
                     f"torch eager fp32 ({t['torch_eager_fp32_p50_ms']:.2f} ms)")
    return "\n".join(lines)


def default_json_path(machine: dict[str, Any] | None = None) -> Path | None:
    """benchmarks/results/bench_<machine>.json when run inside the repository, else None."""
    folder = Path("benchmarks/results")
    return folder / f"bench_{machine_tag(machine)}.json" if folder.is_dir() else None
