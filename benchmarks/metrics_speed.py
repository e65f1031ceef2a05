"""Evaluation metrics speed: one pair's scores, shared features vs independent calls.

    python -m benchmarks.metrics_speed [--pairs 12]

``app.evaluate.score_pair`` computes each target's FSIM features once for the
translation's score and the doing-nothing baseline (6 phase congruencies per pair);
calling ``sketch_scores``/``photo_scores`` independently, as evaluate did before,
computes 8. Both are timed in the same run on CUFS test pairs at their native
200x250 and upscaled to 512x768 (where FSIM first halves the image), interleaved,
and written with the machine to benchmarks/results/metrics_speed_<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facesketch import sysinfo
from facesketch.imageio import decode
from runtime.bench import machine_tag

REPO = Path(__file__).resolve().parents[1]
CUFS = Path(os.environ.get("FACESKETCH_CUFS", REPO.parent / "shared" / "data" / "cufs"))


def _independent(p, s, gs, gp):
    from app.evaluate import photo_scores, sketch_scores
    return (sketch_scores(gs, s), photo_scores(gp, p), sketch_scores(p, s), photo_scores(s, p))


def _shared(p, s, gs, gp):
    from app.evaluate import score_pair
    return score_pair(p, s, gs, gp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--out", help="JSON path (default benchmarks/results/metrics_speed_<machine>.json)")
    a = ap.parse_args(argv)
    if not (CUFS / "test_photos").is_dir():
        raise SystemExit(f"needs CUFS at {CUFS}")
    names = [f"{i}.jpg" for i in np.linspace(1, 338, a.pairs).round().astype(int)]
    res = {}
    for label, size in (("200x250", None), ("512x768", (512, 768))):
        quads = []
        for n in names:
            p, s = decode(CUFS / "test_photos" / n), decode(CUFS / "test_sketches" / n)
            if size:
                p, s = (np.asarray(Image.fromarray(x).resize(size, Image.BICUBIC)) for x in (p, s))
            # stand-ins for the generated images: the other domain's image, slightly blurred
            gs = np.asarray(Image.fromarray(s).resize((s.shape[1] // 2, s.shape[0] // 2)).resize(
                (s.shape[1], s.shape[0])))
            gp = np.asarray(Image.fromarray(p).resize((p.shape[1] // 2, p.shape[0] // 2)).resize(
                (p.shape[1], p.shape[0])))
            quads.append((p, s, gs, gp))
        times = {"independent": [], "shared": []}
        _shared(*quads[0])
        for q in quads:                                  # interleaved: same background load
            for name, fn in (("independent", _independent), ("shared", _shared)):
                t = time.perf_counter()
                fn(*q)
                times[name].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        res[label] = {"seconds_per_pair_median": {k: round(v, 4) for k, v in med.items()},
                      "speedup": round(med["independent"] / med["shared"], 2), "pairs": len(quads)}
        print(f"{label}: independent {med['independent']:.3f} s/pair, shared {med['shared']:.3f} "
              f"s/pair ({res[label]['speedup']}x)", flush=True)
    out = {"benchmark": "metrics_speed", "results": res, "machine": sysinfo.machine(),
           "note": "phase congruency's filtering in complex64 (FSIM within 1e-8 of float64) "
                   "applies to both columns; 'shared' also reuses each target's features",
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(a.out) if a.out else REPO / "benchmarks" / "results" / \
        f"metrics_speed_{machine_tag()}.json"
    sysinfo.write_result(out, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
