"""Fit the built-in photo/sketch detector on CUFS *train* and measure it on CUFS *test*.

    python -m benchmarks.domain_detector [--cufs DIR] [--write] [--json OUT]

* Fitting uses train_photos/ and train_sketches/ only (and augmented copies of
  them: grayscale, toned prints, white backdrops, frames, JPEG, rescaling,
  noise, contrast; tinted paper and faint scans; line drawings and pencil-filter
  drawings made from the photos, labelled sketch). ``--write`` pastes the fitted
  numbers into facesketch/domain.py as DEFAULT_PARAMS (no image leaves the data
  folder).
* Measuring uses test_photos/ and test_sketches/, plus variants made here with
  transformations that differ from the training augmentations where possible
  (fixed paper colours, fixed frames, Canny line drawings from scikit-image when
  it is installed).
* For comparison it measures the rules the detector replaces: a mean-intensity
  threshold (the seed's kind of rule) and a saturation threshold, each with its
  threshold chosen on train to be as good as it can be.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from facesketch import sysinfo
from facesketch.imageio import decode, list_images
from facesketch import domain as D
from training import detector as T

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cufs"
BLOCK = re.compile(r"(# BEGIN DEFAULT_PARAMS[^\n]*\n(?:#[^\n]*\n)*)DEFAULT_PARAMS: dict = .*?\n(# END DEFAULT_PARAMS)",
                   re.S)


def load(folder: Path, names: list[str] | None = None) -> tuple[list[np.ndarray], list[str]]:
    files = list_images(folder) if names is None else [folder / n for n in names]
    return [decode(f) for f in files], [f.name for f in files]


def write_params(params: dict, path: Path = REPO / "facesketch" / "domain.py") -> None:
    text = json.dumps(params, indent=4)
    if re.search(r"\b(true|false|null)\b", text):
        raise ValueError("params hold JSON literals that are not Python")
    src = path.read_text()
    if not BLOCK.search(src):
        raise ValueError(f"{path}: no '# BEGIN DEFAULT_PARAMS ... # END DEFAULT_PARAMS' block")
    path.write_text(BLOCK.sub(lambda m: f"{m.group(1)}DEFAULT_PARAMS: dict = {text}\n{m.group(2)}",
                              src, count=1))


# ------------------------------------------------------------- test variants
def to_gray(rgb: np.ndarray) -> np.ndarray:
    g = np.clip(rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) + 0.5, 0, 255)
    return np.repeat(g.astype(np.uint8)[:, :, None], 3, axis=2)


def on_paper(rgb: np.ndarray, paper: tuple[int, int, int]) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * (np.float32(paper) / 255) + 0.5, 0, 255).astype(np.uint8)


def framed(rgb: np.ndarray, colour: tuple[int, int, int], frac: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    b = max(2, int(round(min(h, w) * frac)))
    out = np.empty((h + 2 * b, w + 2 * b, 3), np.uint8)
    out[:] = colour
    out[b:b + h, b:b + w] = rgb
    return out


def canny_lines(rgb: np.ndarray) -> np.ndarray:
    from skimage.feature import canny
    e = canny(rgb.astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0, sigma=2.0)
    return np.repeat(np.where(e, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def test_variants(photos: list[np.ndarray], sketches: list[np.ndarray]) -> dict[str, tuple[list, str]]:
    from PIL import Image
    rng = np.random.default_rng(2024)

    def resized(a, s):
        return np.asarray(Image.fromarray(a).resize((round(a.shape[1] * s), round(a.shape[0] * s)),
                                                    Image.BICUBIC))

    def jpeg(a, q):
        return T._jpeg(a, q)

    v: dict[str, tuple[list, str]] = {
        "photos grayscale": ([to_gray(p) for p in photos], "photo"),
        "photos grayscale, sepia-toned": ([on_paper(to_gray(p), (255, 235, 200)) for p in photos], "photo"),
        "photos JPEG q25": ([jpeg(p, 25) for p in photos], "photo"),
        "photos half size": ([resized(p, 0.5) for p in photos], "photo"),
        "photos 2.5x size": ([resized(p, 2.5) for p in photos], "photo"),
        "photos black frame 10%": ([framed(p, (0, 0, 0), 0.10) for p in photos], "photo"),
        "photos white frame 15%": ([framed(p, (255, 255, 255), 0.15) for p in photos], "photo"),
        "photos sensor noise": ([np.clip(p + rng.normal(0, 6, p.shape), 0, 255).astype(np.uint8)
                                 for p in photos], "photo"),
        "sketches on cream paper": ([on_paper(s, (250, 238, 205)) for s in sketches], "sketch"),
        "sketches on grey paper": ([on_paper(s, (205, 205, 200)) for s in sketches], "sketch"),
        "sketches on blue paper": ([on_paper(s, (215, 228, 250)) for s in sketches], "sketch"),
        "sketches faint scan": ([(245 - (255 - s.astype(np.int16)) * 0.5).astype(np.uint8)
                                 for s in sketches], "sketch"),
        "sketches black scanner border 8%": ([framed(s, (10, 10, 10), 0.08) for s in sketches],
                                             "sketch"),
        "sketches grey mat 15%": ([framed(s, (128, 128, 128), 0.15) for s in sketches], "sketch"),
        "sketches JPEG q25": ([jpeg(s, 25) for s in sketches], "sketch"),
        "sketches half size": ([resized(s, 0.5) for s in sketches], "sketch"),
        "sketches 2.5x size": ([resized(s, 2.5) for s in sketches], "sketch"),
    }
    try:
        v["line drawings (Canny) from photos"] = ([canny_lines(p) for p in photos], "sketch")
    except ImportError:
        v["line drawings (edges) from photos"] = ([T.line_drawing(p) for p in photos], "sketch")
    return v


# ----------------------------------------------------------------- baselines
def luma_mean(rgb: np.ndarray) -> float:
    return float((rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])).mean())


def saturation_mean(rgb: np.ndarray) -> float:
    f = rgb.astype(np.float32)
    mx, mn = f.max(axis=2), f.min(axis=2)
    return float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0).mean())


def best_threshold(photo_vals: np.ndarray, sketch_vals: np.ndarray) -> tuple[float, int]:
    """Threshold and sign (+1: sketch if value > t) with the best balanced accuracy."""
    best = (-1.0, 0.0, 1)
    for t in np.unique(np.concatenate([photo_vals, sketch_vals])):
        for sign in (1, -1):
            acc = 0.5 * ((sign * photo_vals <= sign * t).mean() + (sign * sketch_vals > sign * t).mean())
            if acc > best[0]:
                best = (acc, float(t), sign)
    return best[1], best[2]


def rule_accuracy(fn, t: float, sign: int, images: list[np.ndarray], label: str) -> float:
    vals = np.array([fn(x) for x in images])
    says_sketch = sign * vals > sign * t
    return float((says_sketch if label == "sketch" else ~says_sketch).mean())


def accuracy(images: list[np.ndarray], label: str, params: dict | None,
             network: Path | None = None) -> tuple[float, list[int]]:
    """Share right and the indices wrong: the CNN at ``network``, else the features' model."""
    if network is not None:
        says = ["sketch" if D.sketch_probability(x, method="cnn", network_path=network) > 0.5
                else "photo" for x in images]
    else:
        says = [D.detect_domain(x, params, method="features")[0] for x in images]
    wrong = [i for i, s in enumerate(says) if s != label]
    return 1.0 - len(wrong) / len(images), wrong


def load_fs2k(root: Path) -> dict[str, dict]:
    """FS2K split by pair number: even -> fitting, odd -> measuring (per style)."""
    out: dict[str, dict] = {"fit": {"photo": [], "sketch": []},
                            "test": {"photo": {}, "gray": {}, "sketch": {}}, "names": {}}
    if not root.is_dir():
        print(f"no FS2K at {root}: fitting on CUFS only")
        return out
    for style in sorted(p.name for p in root.iterdir() if (p / "photos").is_dir()):
        for kind, sub in (("photo", "photos"), ("sketch", "sketches")):
            files = list_images(root / style / sub)
            fit = [f for f in files if int(re.sub(r"\D", "", f.stem) or 0) % 2 == 0]
            test = [f for f in files if f not in fit]
            out["fit"][kind] += [decode(f) for f in fit]
            out["test"][kind][style] = [decode(f) for f in test]
            out["names"][style] = [f.name for f in test]
        out["test"]["gray"][style] = [to_gray(x) for x in out["test"]["photo"][style]]
    return out


def rule_baselines(tp, ts, ep, es) -> dict[str, dict]:
    """The rules the detector replaces, thresholds chosen on train."""
    baselines = {}
    for rname, fn in (("mean intensity threshold", luma_mean), ("mean saturation threshold", saturation_mean)):
        t, sign = best_threshold(np.array([fn(x) for x in tp]), np.array([fn(x) for x in ts]))
        res = {"threshold": round(t, 4), "sketch_if": "above" if sign > 0 else "below",
               "test photos": rule_accuracy(fn, t, sign, ep, "photo"),
               "test sketches": rule_accuracy(fn, t, sign, es, "sketch"),
               "photos grayscale": rule_accuracy(fn, t, sign, [to_gray(p) for p in ep], "photo")}
        baselines[rname + " (best threshold on train)"] = res
        print(f"{rname} (t={t:.3f}, sketch if {res['sketch_if']}): photos {res['test photos']:.1%}, "
              f"sketches {res['test sketches']:.1%}, grayscale photos {res['photos grayscale']:.1%}")
    return baselines


def fit(a: argparse.Namespace, fit_photos: list, fit_sketches: list):
    """-> (feature params or None, the CNN's ONNX path or None, fit summary, its JSON part)."""
    network: Path | None = None
    if a.method == "cnn":
        from export.domain_detector import write_domain_onnx
        from training.domain_cnn import fit_cnn
        net, fitted = fit_cnn(fit_photos, fit_sketches, per_image=a.per_image, epochs=a.epochs,
                              width=a.width, members=a.members, seed=a.seed, threads=a.threads)
        params = None
        network = D.CNN_PATH if a.write else a.json.with_suffix(".onnx")
        write_domain_onnx(net, network, fitted)
        fit_info = {k: v for k, v in fitted.items() if k not in ("fitted_on", "seconds")}
        print(f"wrote the CNN to {network}")
    else:
        params = T.fit_detector(fit_photos, fit_sketches, per_image=a.per_image, max_images=None,
                                seed=a.seed)
        fitted = params
        fit_info = {"train_accuracy": params["train_accuracy"]}
        if a.write:
            write_params(params)
            print("wrote DEFAULT_PARAMS into facesketch/domain.py")
    return params, network, fitted, fit_info


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cufs", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--fs2k", type=Path, default=REPO.parent / "shared" / "data" / "fs2k",
                    help="FS2K pairs: the even-numbered ones join the fit, the odd-numbered ones "
                         "are measured (colour, grayscale, sketches); skipped when absent")
    ap.add_argument("--method", choices=("cnn", "features"), default="cnn",
                    help="cnn: the built-in network (training.domain_cnn); features: the "
                         "logistic model on hand-made features (the fallback)")
    ap.add_argument("--per-image", type=int, default=6, help="augmented copies per training image")
    ap.add_argument("--epochs", type=int, default=12, help="CNN epochs")
    ap.add_argument("--width", type=int, default=16, help="CNN width (first layer's channels)")
    ap.add_argument("--members", type=int, default=3,
                    help="CNNs fitted from different seeds whose logits are averaged")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the CNN fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true",
                    help="install the fit: the CNN as facesketch/models/domain/detector.onnx, "
                         "the features' model pasted into facesketch/domain.py")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: benchmarks/results/domain_detector[_features].json")
    a = ap.parse_args(argv)
    if a.json is None:
        suffix = "" if a.method == "cnn" else "_features"
        a.json = REPO / "benchmarks" / "results" / f"domain_detector{suffix}.json"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)

    tp, _ = load(a.cufs / "train_photos")
    ts, _ = load(a.cufs / "train_sketches")
    fs2k = load_fs2k(a.fs2k)
    t0 = time.perf_counter()
    params, network, fitted, fit_info = fit(a, tp + fs2k["fit"]["photo"], ts + fs2k["fit"]["sketch"])
    fit_s = time.perf_counter() - t0
    print(f"fitted on {len(tp)} CUFS train photos + {len(ts)} sketches and "
          f"{len(fs2k['fit']['photo'])} FS2K photos + {len(fs2k['fit']['sketch'])} sketches "
          f"({fitted['fitted_on']['samples']} samples with augmentations) in {fit_s:.1f} s")

    ep, names = load(a.cufs / "test_photos")
    es, _ = load(a.cufs / "test_sketches", names)
    student = set()
    tsv = a.cufs / "test_subsets.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines()[1:]:
            name, _, source = line.partition("\t")
            if source.strip() == "CUHK_student":
                student.add(name.strip())

    rows: dict[str, dict] = {}

    def record(name, images, label):
        t = time.perf_counter()
        acc, wrong = accuracy(images, label, params, network)
        ms = (time.perf_counter() - t) / len(images) * 1000
        rows[name] = {"label": label, "n": len(images), "accuracy": round(acc, 4),
                      "wrong": [names[i] for i in wrong], "ms_per_image": round(ms, 2)}
        print(f"{name:40s} {acc * 100:6.2f}%  ({len(wrong)} wrong of {len(images)})")

    record("test photos", ep, "photo")
    record("test sketches", es, "sketch")
    sub = [i for i, n in enumerate(names) if n in student]
    record("test photos, CUHK student", [ep[i] for i in sub], "photo")
    record("test sketches, CUHK student", [es[i] for i in sub], "sketch")
    for name, (images, label) in test_variants(ep, es).items():
        record(name, images, label)
    for kind, label in (("photo", "photo"), ("gray", "photo"), ("sketch", "sketch")):
        for style, images in fs2k["test"][kind].items():
            names[:] = [f"{style}/{n}" for n in fs2k["names"][style]]
            record(f"FS2K {style} {'grayscale photos' if kind == 'gray' else kind + 's'} "
                   "(held out)", images, label)
    baselines = rule_baselines(tp, ts, ep, es)

    what = ("the built-in CNN (training/domain_cnn.py, run by facesketch/domain.py)" if a.method == "cnn"
            else "the features' logistic model (facesketch/domain.py DEFAULT_PARAMS, the fallback)")
    result = {
        "what": f"photo/sketch detector: {what}, fitted on CUFS train and the even-numbered FS2K "
                "pairs, measured on CUFS test and the odd-numbered FS2K pairs",
        "method": a.method,
        "fit": {"seconds": round(fit_s, 2), **fitted["fitted_on"], **fit_info},
        "results": rows,
        "baselines": baselines,
        "seed_rule_reported_in_issue": {"test photos": 0.006, "test sketches": 0.34},
        "machine": sysinfo.machine(),
    }
    sysinfo.write_result(result, a.json)
    print(f"saved {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
