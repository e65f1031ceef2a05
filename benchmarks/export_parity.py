"""Parity of every export format against PyTorch fp32, on real held-out images.

    python -m benchmarks.export_parity CHECKPOINT [CHECKPOINT ...] [--random-init]
        [--data ../shared/data/cufs] [--images 32] [--json OUT]

For each checkpoint (and, with --random-init, an untrained 128px/3-block one):
export every format (calibrated on the training images, as `facesketch export`
does), then run each file through the runtime backend that verified it on N
test photos (photo2sketch) and N test sketches (sketch2photo) of CUFS, and
compare with the PyTorch fp32 output: PSNR over the [-1, 1] range (all images
together, and the worst single image) and the max abs error. These numbers set
the floors in facesketch/formats.py. Results: benchmarks/results/export_parity_<machine>.json.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from facesketch import sysinfo
from facesketch.metrics import model_psnr
from facesketch.formats import DIRECTION_GENERATOR, DIRECTIONS, FORMATS

log = logging.getLogger("facesketch.bench")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return model_psnr(a, b)


def _test_inputs(data: Path, direction: str, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    from facesketch.imageio import decode, fit_square, list_images
    folder = data / ("test_photos" if direction == "photo2sketch" else "test_sketches")
    files = list_images(folder)[:n]
    sq = np.stack([fit_square(decode(f), size)[0] for f in files])
    return np.ascontiguousarray(sq.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0), [f.name for f in files]


def measure(checkpoint: Path, data: Path, images: int, work: Path) -> dict:
    import torch
    from export import export_bundle
    from runtime import backends as B
    from runtime.bundle import Bundle
    from training.checkpoint import load_model
    nets, cfg = load_model(checkpoint)
    size = int(cfg["image_size"])
    bundle_dir = export_bundle(checkpoint, work / "bundle", formats="all", speed_check=False,
                               calibration=data)
    bundle = Bundle.load(bundle_dir)
    out = {"checkpoint": str(checkpoint), "progress": cfg.get("progress"), "arch": cfg["arch"],
           "image_size": size, "skipped": bundle.skipped, "refused": bundle.manifest.get("refused", {}),
           "formats": {}}
    for direction in DIRECTIONS:
        x, names = _test_inputs(data, direction, images, size)
        with torch.inference_mode():
            ref = nets[DIRECTION_GENERATOR[direction]](torch.from_numpy(x)).numpy()
        for fmt in bundle.formats:
            entry = bundle.entry(fmt, direction)
            spec = B.BACKENDS[entry["parity"]["backend"]]
            be = spec.create(bundle.files_for(entry), dict(entry, info=entry.get("info", {}))).load()
            y = np.concatenate([be.run(x[i:i + 8]) for i in range(0, len(x), 8)])
            be.close()
            per = [_psnr(y[i], ref[i]) for i in range(len(x))]
            out["formats"].setdefault(fmt, {})[direction] = {
                "backend": spec.name, "images": len(x), "psnr_db": round(_psnr(y, ref), 2),
                "worst_image_psnr_db": round(min(per), 2), "max_abs_err": float(np.abs(y - ref).max()),
                "export_parity_psnr_db": entry["parity"]["psnr_db"], "floor_db": FORMATS[fmt].floor_db}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", help="checkpoint folders")
    ap.add_argument("--random-init", action="store_true", help="also an untrained 128px, 3-block model")
    ap.add_argument("--data", default="../shared/data/cufs", help="CUFS folder (train_* to calibrate, test_* to check)")
    ap.add_argument("--images", type=int, default=32, help="test images per direction")
    ap.add_argument("--json", help="output (default benchmarks/results/export_parity_<machine>.json)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from runtime.bench import machine_tag
    data = Path(a.data)
    machine = sysinfo.machine()
    results = []
    work = Path(tempfile.mkdtemp(prefix="facesketch-parity-"))
    try:
        cks = [Path(c) for c in a.checkpoints]
        if a.random_init:
            import torch
            from training.checkpoint import model_config, save_model
            from training.networks import build_generator, init_weights
            torch.manual_seed(0)
            cks.append(save_model(work / "random-init", init_weights(build_generator(3, 64)),
                                  init_weights(build_generator(3, 64)), model_config(3, 64, 128)))
        for i, ck in enumerate(cks):
            sub = work / f"run{i}"
            sub.mkdir()
            t = time.perf_counter()
            results.append(measure(ck, data, a.images, sub))
            results[-1]["seconds"] = round(time.perf_counter() - t, 1)
            shutil.rmtree(sub, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"kind": "facesketch-export-parity", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine, "method": __doc__.strip().splitlines()[0] + " PSNR peak = 2 ([-1, 1]).",
           "results": results}
    path = Path(a.json) if a.json else Path("benchmarks/results") / f"export_parity_{machine_tag(machine)}.json"
    sysinfo.write_result(doc, path)
    for r in results:
        print(f"{r['checkpoint']} (step {(r.get('progress') or {}).get('global_step')}):")
        for fmt, d in r["formats"].items():
            print(f"  {fmt:<14}" + "  ".join(f"{k}: {v['psnr_db']:.1f} dB (worst {v['worst_image_psnr_db']:.1f}, "
                                            f"max err {v['max_abs_err']:.3f})" for k, v in d.items()))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
