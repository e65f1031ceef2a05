"""Face finding and alignment on real data: how often a face is found, how well the
aligned crop matches the CUFS framing, and how long it takes.

For every FS2K photo (and CUFS test photos and sketches): detect, align the largest
face, detect again on the aligned crop and measure its eyes against the template
(error in fractions of the crop's face width, i.e. the template's ear-to-ear
distance). Target (issue 12): face found on >= 98% of FS2K photos, eyes within 5%.

    python -m benchmarks.face_align --fs2k ../shared/data/fs2k --cufs ../shared/data/cufs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facesketch import sysinfo
from facesketch.face import FaceFinder
from facesketch.imageio import decode, list_images

RESULTS = Path(__file__).resolve().parent / "results"


def crop_errors(finder: FaceFinder, crop: np.ndarray) -> tuple[float, float] | None:
    """(largest eye offset, mouth offset) on the crop from the template, in face widths
    (ear to ear of the template); None when no face is found on the crop."""
    faces = finder.detect(crop)
    if not faces:
        return None
    tmpl = np.asarray(finder.template["points"]) * np.array([crop.shape[1], crop.shape[0]])
    face_w = float(tmpl[5, 0] - tmpl[4, 0])
    err = np.hypot(*(faces[0].keypoints[[0, 1, 3]] - tmpl[[0, 1, 3]]).T) / face_w
    return float(err[:2].max()), float(err[2])


def run_set(finder: FaceFinder, paths: list[Path], label: str) -> dict:
    found, errors, mouth, lost, ms, framed = 0, [], [], 0, [], 0
    missed = []
    for p in paths:
        rgb = decode(p)
        t0 = time.perf_counter()
        faces = finder.detect(rgb)
        ms.append((time.perf_counter() - t0) * 1000)
        if not faces:
            missed.append(p.name)
            continue
        found += 1
        framed += finder.is_framed(rgb, faces[0])
        al = finder.align(rgb, faces[0])
        e = crop_errors(finder, al.crop)
        if e is None:
            lost += 1
        else:
            errors.append(e[0])
            mouth.append(e[1])
    errors_a = np.asarray(errors) if errors else np.zeros(1)
    mouth_a = np.asarray(mouth) if mouth else np.zeros(1)
    res = {"set": label, "images": len(paths), "face_found": found,
           "face_found_rate": round(found / max(1, len(paths)), 4),
           "already_framed": framed,
           "redetected_on_crop": len(errors), "lost_on_crop": lost,
           "eye_error_face_widths": {"mean": round(float(errors_a.mean()), 4),
                                     "p95": round(float(np.percentile(errors_a, 95)), 4),
                                     "max": round(float(errors_a.max()), 4)},
           "eyes_within_5pct": round(float((errors_a <= 0.05).mean()), 4),
           "mouth_error_face_widths": {"mean": round(float(mouth_a.mean()), 4),
                                       "p95": round(float(np.percentile(mouth_a, 95)), 4)},
           "mouth_within_5pct": round(float((mouth_a <= 0.05).mean()), 4),
           "detect_ms": {"p50": round(float(np.median(ms)), 2),
                         "p95": round(float(np.percentile(ms, 95)), 2)},
           "missed": missed[:20]}
    print(json.dumps({k: v for k, v in res.items() if k != "missed"}), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fs2k", type=Path, default=Path("../shared/data/fs2k"))
    ap.add_argument("--cufs", type=Path, default=Path("../shared/data/cufs"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    finder = FaceFinder()
    sets = []
    for style in ("style2", "style3"):
        for kind in ("photos", "sketches"):
            folder = a.fs2k / style / kind
            if folder.is_dir():
                sets.append(run_set(finder, list_images(folder), f"fs2k/{style}/{kind}"))
    for kind in ("test_photos", "test_sketches"):
        folder = a.cufs / kind
        if folder.is_dir():
            sets.append(run_set(finder, list_images(folder), f"cufs/{kind}"))
    if not sets:
        raise SystemExit(f"no data under {a.fs2k} or {a.cufs}")
    out = sysinfo.write_result({"benchmark": "face_align", "finder": "BlazeFace short range (ONNX, 1 thread)",
                                "template": finder.template, "sets": sets, "machine": sysinfo.machine()},
                               a.out or RESULTS / "face_align.json")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
