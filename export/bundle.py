"""export_bundle: checkpoint -> bundle folder (manifest.json + verified engine files).

Every format goes through ``run_format``, the one wrapper around the exporters:
it times the exporter, logs the file size, runs the file through the runtime's
own backend on real images of the direction's input domain and compares it
with the PyTorch fp32 output (max abs error, PSNR over the [-1, 1] range),
refuses it below its format's floor (facesketch.formats floor_db) and re-raises
failures with the format and direction named. A format whose package or
hardware is missing is skipped with a one-line reason in the manifest.

The bundle is written to a temporary sibling folder and renamed into place at
the end, so a failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from facesketch import formats as F
from facesketch import sysinfo
from facesketch.metrics import model_psnr
from facesketch.formats import DIRECTIONS, SOURCE_DOMAIN

from .context import ExportContext, ExportError, FormatSkipped, ParityError, calibration_folders, quiet
from .exporters import exporter

log = logging.getLogger("facesketch.export")
BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST = "facesketch-bundle", 1, "manifest.json"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def parity(reference: np.ndarray, output: np.ndarray) -> dict[str, Any]:
    """Max/mean abs error and PSNR (peak = 2, the [-1, 1] output range) of output vs reference."""
    if output.shape != reference.shape:
        raise ExportError(f"output shape {output.shape} differs from the reference's {reference.shape}")
    if not np.all(np.isfinite(output)):
        return {"psnr_db": 0.0, "max_abs_err": float("nan"), "mean_abs_err": float("nan"),
                "identical": False, "nonfinite": True}
    err = output.astype(np.float64) - reference.astype(np.float64)
    psnr = model_psnr(output, reference)
    return {"psnr_db": round(psnr, 3), "max_abs_err": float(np.abs(err).max()),
            "mean_abs_err": float(np.abs(err).mean()), "identical": not err.any()}


def check_parity(ctx: ExportContext, name: str, direction: str, path: Path,
                 entry: dict[str, Any]) -> dict[str, Any]:
    from runtime import backends as B
    spec, why = B.verifier(name)
    if spec is None:
        raise FormatSkipped(f"no backend on this machine can run {name} to verify it ({why})")
    files = {"model": path}
    for c in ctx.extras.get((name, direction), {}).get("companions", []):
        files[c["role"]] = Path(c["path"])
    backend = spec.create(files, dict(entry, image_size=ctx.size, max_batch=ctx.max_batch,
                                      info=ctx.extras.get((name, direction), {}).get("info", {}))).load()
    try:
        x, ref = ctx.parity_inputs(direction), ctx.reference(direction)
        y = np.concatenate([backend.run(x[i:i + ctx.max_batch]) for i in range(0, len(x), ctx.max_batch)])
    finally:
        backend.close()
    floor = F.FORMATS[name].floor_db
    res = parity(ref, y)
    res.update({"floor_db": floor, "images": int(len(x)), "backend": spec.name,
                "reference": "PyTorch fp32 CPU", "image_names": ctx.images(SOURCE_DOMAIN[direction]).parity_names,
                "passed": res["psnr_db"] >= floor})
    if not res["passed"]:
        raise ParityError(f"{name} {direction}: parity PSNR {res['psnr_db']:.2f} dB (max abs error "
                          f"{res['max_abs_err']:.4f}) against PyTorch fp32 on {len(x)} real images is "
                          f"below the {name} floor of {floor:.1f} dB; refusing this file")
    return res


def run_format(ctx: ExportContext, name: str, direction: str) -> dict[str, Any]:
    """Export one (format, direction), check it, and return its manifest entry."""
    fmt = F.get(name)
    missing = fmt.missing_packages()
    if missing:
        raise FormatSkipped(f"needs the Python package(s) {', '.join(missing)}, not installed here")
    out_path = ctx.out / f"{direction}{fmt.suffix}"
    t0 = time.perf_counter()
    try:
        path = Path(exporter(name)(ctx, direction, out_path))
    except (FormatSkipped, ExportError):
        raise
    except Exception as exc:
        raise ExportError(f"exporting {name} for {direction} failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - t0
    extra = ctx.extras.get((name, direction), {})
    nbytes = path.stat().st_size + sum(Path(c["path"]).stat().st_size
                                       for c in extra.get("companions", []) if not c.get("shared"))
    log.info("%-13s %-12s wrote %s (%.2f MB) in %.1f s", name, direction, path.name, nbytes / 1e6, seconds)
    io = extra.get("io", {})
    entry = {
        "format": name, "direction": direction,
        "domain_in": SOURCE_DOMAIN[direction],
        "domain_out": "sketch" if SOURCE_DOMAIN[direction] == "photo" else "photo",
        "path": path.name, "precision": fmt.precision, "device": fmt.device,
        "inputs": io.get("inputs", []), "outputs": io.get("outputs", []),
        "dynamic_axes": io.get("dynamic_axes", {}),
        "image_size": ctx.size, "max_batch": ctx.max_batch, "normalization": ctx.normalization,
        "export_seconds": round(seconds, 2),
    }
    try:
        with quiet():
            entry["parity"] = check_parity(ctx, name, direction, path, entry)
    except (FormatSkipped, ParityError):
        raise
    except Exception as exc:
        raise ExportError(f"checking {name} for {direction} failed: {type(exc).__name__}: {exc}") from exc
    p = entry["parity"]
    log.info("%-13s %-12s parity %.2f dB, max abs err %.2e on %d images (floor %.0f dB, %s)", name,
             direction, p["psnr_db"], p["max_abs_err"], p["images"], p["floor_db"], p["backend"])
    entry["companions"] = [{"path": Path(c["path"]).name, "role": c["role"]}
                           for c in extra.get("companions", [])]
    entry["info"] = extra.get("info", {})
    return entry


def _owned_files(ctx: ExportContext, name: str) -> list[Path]:
    fmt = F.get(name)
    out = [ctx.out / f"{d}{fmt.suffix}" for d in DIRECTIONS]
    for d in DIRECTIONS:
        out += [Path(c["path"]) for c in ctx.extras.get((name, d), {}).get("companions", [])
                if not c.get("shared")]
    return out


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (its best/ checkpoint when it has one), a checkpoint folder or file."""
    from training.checkpoint import resolve
    p = Path(path)
    if p.is_dir() and (p / "best" / "model.safetensors").is_file() and not (p / MANIFEST).is_file():
        log.info("%s is a run folder: exporting its best checkpoint (best/)", p)
        return resolve(p / "best")
    return resolve(p)


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike,
                  formats: str | Iterable[str] = "all", size: int | None = None, max_batch: int = 32,
                  calibration: str | os.PathLike | None = None, *, speed_check: bool = True,
                  parity_images: int = 8) -> Path:
    """Export ``checkpoint`` into the bundle folder ``out``; returns ``out``.

    formats: "all", a comma list or an iterable of format names. Named formats that
    fail their parity floor raise ParityError; with "all" such a format is left out
    and recorded under "refused" in the manifest (and logged as an error).
    size: the bundle's image size (default: the checkpoint's). calibration: a folder
    of real images (a photos/sketches layout, or one folder for both directions);
    default: the training data folders recorded in the checkpoint.
    speed_check: keep openvino-int8 only where it measures faster than fp32 here.
    """
    from training.checkpoint import load_model, sha256_file
    explicit = not (isinstance(formats, str) and formats.strip() in ("", "all"))
    names = F.parse_list(formats) if isinstance(formats, str) else [F.get(n).name for n in formats]
    names = [n for n in F.FORMATS if n in names]  # table order: onnx before what derives from it
    if max_batch < 1:
        raise ExportError(f"--max-batch must be >= 1, got {max_batch}")
    st = resolve_checkpoint(checkpoint)
    nets, cfg = load_model(st)
    size = int(size or cfg["image_size"])
    if size < 16 or size % 4:
        raise ExportError(f"--size must be a multiple of 4 and >= 16 (the generator downsamples "
                          f"twice), got {size}")
    folders, note = calibration_folders(cfg, st, calibration)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"--out {out} is a non-empty folder that is not a bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    work = Path(tempfile.mkdtemp(prefix="facesketch-export-"))
    t_all = time.perf_counter()
    ctx = ExportContext(checkpoint=st, config=cfg, nets=nets, out=tmp, work=work, size=size,
                        max_batch=max_batch, folders=folders, folders_note=note,
                        speed_check=speed_check, parity_images=parity_images,
                        checkpoint_sha256=sha256_file(st))
    try:
        entries, skipped, refused = _export_formats(ctx, names, explicit)
        for e in entries:  # hashes last: shared companions (timing cache) are final only now
            e["sha256"] = sha256_file(tmp / e["path"])
            e["bytes"] = (tmp / e["path"]).stat().st_size
            for c in e["companions"]:
                c["sha256"] = sha256_file(tmp / c["path"])
                c["bytes"] = (tmp / c["path"]).stat().st_size
        manifest = _manifest(ctx, cfg, st, entries, skipped, refused, time.perf_counter() - t_all)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle %s: %d files, %s skipped, %s refused", out, len(entries),
             len(skipped), len(refused))
    return out


def _export_formats(ctx: ExportContext, names: list[str],
                    explicit: bool) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """(manifest entries, skipped format -> why, refused format -> parity error)."""
    entries, skipped, refused = [], {}, {}
    for name in names:
        done = []
        try:
            for direction in DIRECTIONS:
                done.append(run_format(ctx, name, direction))
        except FormatSkipped as exc:
            skipped[name] = _one_line(exc)
            log.info("%-13s skipped: %s", name, skipped[name])
        except ParityError as exc:
            if explicit:
                raise
            refused[name] = str(exc)
            log.error("%s", exc)
        else:
            entries += done
            continue
        for f in _owned_files(ctx, name):
            f.unlink(missing_ok=True)
        if name == "onnx":  # derived formats must not start from a removed file
            ctx.forget_onnx_files()
    if not entries:
        raise ExportError("no format could be exported: "
                          + "; ".join(f"{k}: {v}" for k, v in {**skipped, **refused}.items()))
    return entries, skipped, refused


def _replace_folder(new: Path, out: Path) -> None:
    """Put the finished bundle in place (the old one, if any, goes only after)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(ctx: ExportContext, cfg: dict, st: Path, entries: list[dict], skipped: dict,
              refused: dict, seconds: float) -> dict[str, Any]:
    machine = sysinfo.machine()
    gpus = machine.get("gpus") or []
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image_size": ctx.size,
        "normalization": ctx.normalization,
        "layout": "NCHW float32 RGB",
        "directions": {d: {"domain_in": SOURCE_DOMAIN[d],
                           "domain_out": "sketch" if SOURCE_DOMAIN[d] == "photo" else "photo",
                           "generator": cfg.get("generators", F.DIRECTION_GENERATOR)[d]}
                       for d in DIRECTIONS},
        "detector": cfg.get("detector"),
        "postprocess": cfg.get("postprocess") or {},
        "source": {"checkpoint": str(st), "checkpoint_sha256": ctx.checkpoint_sha256,
                   "weights_sha256": cfg.get("weights_sha256"), "arch": cfg.get("arch"),
                   "trained_image_size": cfg.get("image_size"), "metrics": cfg.get("metrics"),
                   "progress": cfg.get("progress"), "data": cfg.get("data")},
        "build": {"device": gpus[0]["name"] if gpus else "cpu", "machine": machine,
                  "libraries": machine["libraries"], "max_batch": ctx.max_batch,
                  "seconds": round(seconds, 1), "speed_check": ctx.speed_check},
        "calibration": {"source": ctx.folders_note,
                        **{dom: {"folder": str(d.folder), "calibration_images": len(d.calibration_names),
                                 "parity_images": d.parity_names}
                           for dom, d in ctx._images.items()}},
        "files": entries,
        "skipped": skipped,
        "refused": refused,
    }
