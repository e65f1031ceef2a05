"""Evaluate a model on paired test data the way the face-sketch literature does.

    from app.evaluate import evaluate, markdown
    report = evaluate("bundles/default", "../shared/data/cufs", grid="grid.png")
    print(markdown(report))

For every pair (a photo and the artist's sketch of the same face, matched by
file name) and both directions:

* photo -> sketch: the generated sketch against the artist's sketch: SSIM and
  FSIM on grayscale (luma), PSNR on luma;
* sketch -> photo: the generated photo against the real photo: FSIMc (colour),
  plus grayscale FSIM and SSIM, PSNR over RGB;

at the dataset's native size: the runtime (``runtime.Translator``) fits each
input into the model's square and brings the output back to the input's size
(``facesketch.imageio.unfit``), so at CUFS's 200x250 nothing is rescaled for
the metrics. Also: the same metrics for the untranslated input against the
target (what doing nothing scores), the domain detector's accuracy on the same
photos and sketches (with the model's own detector parameters when it carries
them), per-subset rows (CUFS ``test_subsets.tsv``: the 100 CUHK student faces
are what papers report), published anchors, and an image grid.

Metric definitions: facesketch.metrics (SSIM as Wang et al. 2004; FSIM/FSIMc as
Zhang et al. 2011).
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facesketch import imageio, sysinfo
from facesketch.metrics import (FsimFeatures, checkerboard_db, cross_hatch, fsim_features, fsim_from, psnr,
                                ssim, stroke_distance, to_gray)
from facesketch.progress import ProgressBar

log = logging.getLogger("facesketch.evaluate")

# Published FSIM on CUFS: semi-supervised CycleGAN (Face-Sketch-SCG), 256x256.
ANCHORS = {
    "photo2sketch": {"fsim": 0.7343, "source": "semi-supervised CycleGAN (Face-Sketch-SCG)",
                     "dataset": "CUFS", "size": 256},
    "sketch2photo": {"fsim": 0.7652, "source": "semi-supervised CycleGAN (Face-Sketch-SCG)",
                     "dataset": "CUFS", "size": 256},
}
ALL = "all"
GRID_FACES = 6
METRIC_KEYS = {"photo2sketch": ("ssim", "fsim", "psnr", "stroke"),
               "sketch2photo": ("ssim", "fsim", "fsimc", "psnr")}


# ------------------------------------------------------------------ pairing
@dataclass
class Pairs:
    """Photos and sketches of the same faces, matched by file name (stem)."""

    names: list[str]
    photos: list[Path]
    sketches: list[Path]
    photo_dir: Path
    sketch_dir: Path
    subsets: dict[str, str] = field(default_factory=dict)   # name -> subset label
    unpaired: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def _read_subsets(path: Path) -> dict[str, str]:
    """``name<TAB>subset`` per line after a header (CUFS test_subsets.tsv)."""
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip() or (i == 0 and line.lower().startswith(("index", "name", "file"))):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{i + 1}: expected 'name<TAB>subset', got {line!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


def find_pairs(data: str | os.PathLike | None = None, photos: str | os.PathLike | None = None,
               sketches: str | os.PathLike | None = None) -> Pairs:
    """Paired test data: ``data`` with test_photos/ + test_sketches/ (CUFS) or
    testA/ + testB/ (CycleGAN), or explicit ``photos`` and ``sketches`` folders.
    Files pair by name without the suffix; a ``test_subsets.tsv`` beside them
    (name, subset) labels subsets."""
    if photos or sketches:
        if not (photos and sketches):
            raise ValueError("give both --photos and --sketches (or --data)")
        pdir, sdir = Path(photos), Path(sketches)
        root = Path(data) if data else pdir.parent
    elif data:
        root = Path(data)
        if not root.is_dir():
            raise FileNotFoundError(f"no data folder at {root}")
        for a, b in (("test_photos", "test_sketches"), ("testA", "testB"), ("photos", "sketches")):
            if (root / a).is_dir() and (root / b).is_dir():
                pdir, sdir = root / a, root / b
                break
        else:
            groups = sorted(d for d in root.iterdir() if (d / "photos").is_dir() and (d / "sketches").is_dir())
            if groups:
                return _merge([find_pairs(photos=d / "photos", sketches=d / "sketches") for d in groups],
                              [d.name for d in groups], root)
            raise ValueError(f"{root} has neither test_photos/ + test_sketches/ (CUFS), testA/ + "
                             "testB/ (CycleGAN), nor photos/ + sketches/ (also one level down, as "
                             "FS2K's style folders); or give --photos and --sketches")
    else:
        raise ValueError("give --data DIR, or --photos DIR and --sketches DIR")
    for d in (pdir, sdir):
        if not d.is_dir():
            raise FileNotFoundError(f"no folder at {d}")
    ph = {f.stem: f for f in imageio.list_images(pdir)}
    sk = {f.stem: f for f in imageio.list_images(sdir)}
    common = sorted(set(ph) & set(sk), key=_natural_key)
    if not common:
        raise ValueError(f"no photo in {pdir} has a sketch of the same name in {sdir} "
                         f"({len(ph)} photos, {len(sk)} sketches)")
    subsets: dict[str, str] = {}
    tsv = root / "test_subsets.tsv"
    if tsv.is_file():
        labels = _read_subsets(tsv)
        by_stem = {Path(k).stem: v for k, v in labels.items()}
        subsets = {s: by_stem[s] for s in common if s in by_stem}
    names = [ph[s].name for s in common]
    return Pairs(names=names, photos=[ph[s] for s in common], sketches=[sk[s] for s in common],
                 photo_dir=pdir, sketch_dir=sdir,
                 subsets={ph[s].name: v for s, v in subsets.items()},
                 unpaired={"photos": sorted(f.name for s, f in ph.items() if s not in sk),
                           "sketches": sorted(f.name for s, f in sk.items() if s not in ph)})


# ------------------------------------------------------------------ metrics
def _merge(parts: list[Pairs], labels: list[str], root: Path) -> Pairs:
    """Several photos/ + sketches/ folders (FS2K's styles) as one set, each a subset."""
    out = Pairs(names=[], photos=[], sketches=[], photo_dir=root, sketch_dir=root,
                unpaired={"photos": [], "sketches": []})
    for part, label in zip(parts, labels):
        names = [f"{label}/{n}" for n in part.names]
        out.names += names
        out.photos += part.photos
        out.sketches += part.sketches
        out.subsets.update({n: label for n in names})
        for k in ("photos", "sketches"):
            out.unpaired[k] += [f"{label}/{n}" for n in part.unpaired.get(k, [])]
    return out


def _match(out: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The output at the target's size (already so when input and target sizes agree)."""
    if out.shape[:2] == target.shape[:2]:
        return out
    from PIL import Image
    return np.asarray(Image.fromarray(out).resize((target.shape[1], target.shape[0]), Image.BICUBIC))


def sketch_scores(generated: np.ndarray, artist: np.ndarray,
                  artist_features: FsimFeatures | None = None) -> dict[str, float]:
    """photo -> sketch: grayscale SSIM, FSIM and PSNR (sketches are grayscale drawings),
    and the stroke distance (stroke orientation and energy, free of phase).
    ``artist_features``: fsim_features(to_gray(artist)), when the caller reuses them."""
    g, t = to_gray(_match(generated, artist)), to_gray(artist)
    ft = artist_features or fsim_features(t)
    return {"ssim": ssim(g, t), "fsim": fsim_from(fsim_features(g), ft)[0], "psnr": psnr(g, t),
            "stroke": stroke_distance(g, t)}


def photo_scores(generated: np.ndarray, real: np.ndarray,
                 real_features: FsimFeatures | None = None) -> dict[str, float]:
    """sketch -> photo: FSIMc (colour) and grayscale FSIM, SSIM on luma, PSNR over RGB.
    ``real_features``: fsim_features(real) (colour), when the caller reuses them."""
    g = _match(generated, real)
    f, fc = fsim_from(fsim_features(g), real_features or fsim_features(real), chromatic=True)
    return {"ssim": ssim(g, real), "fsim": f, "fsimc": fc,
            "psnr": psnr(g.astype(np.float64), real.astype(np.float64))}


# texture measures taken on the model's own pixel grid, of outputs and of targets alike
GRID_MEASURES = {"checkerboard_db": checkerboard_db, "cross_hatch": cross_hatch}


def score_pair(photo: np.ndarray, sketch: np.ndarray, gen_sketch: np.ndarray, gen_photo: np.ndarray,
               raw_sketch: np.ndarray | None = None, raw_photo: np.ndarray | None = None,
               model_size: int | None = None) -> dict[str, Any]:
    """Every score of one pair. Each target's FSIM features are computed once and serve
    both the translation and the doing-nothing baseline. With the raw (model-grid)
    outputs and the model size, also the texture measures of GRID_MEASURES (checkerboard,
    cross-hatch) of ours and of the target brought to the same grid."""
    sketch_f, photo_f = fsim_features(to_gray(sketch)), fsim_features(photo)
    row: dict[str, Any] = {
        "photo2sketch": sketch_scores(gen_sketch, sketch, sketch_f),
        "sketch2photo": photo_scores(gen_photo, photo, photo_f),
        "input_vs_target": {"photo2sketch": sketch_scores(photo, sketch, sketch_f),
                            "sketch2photo": photo_scores(sketch, photo, photo_f)},
    }
    if raw_sketch is not None and raw_photo is not None and model_size:
        on_grid = lambda img: imageio.inner(*imageio.fit_square(img, model_size))  # noqa: E731
        for name, measure in GRID_MEASURES.items():
            row["photo2sketch"][name] = measure(raw_sketch)
            row["sketch2photo"][name] = measure(raw_photo)
            row[f"target_{name}"] = {"photo2sketch": measure(on_grid(sketch)),
                                     "sketch2photo": measure(on_grid(photo))}
    return row


def _summary(rows: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        if v.size == 0:
            continue
        finite = v[np.isfinite(v)]
        out[k] = float(finite.mean()) if finite.size else None
        out[k + "_std"] = float(finite.std()) if finite.size else None
        if finite.size < v.size:
            out[k + "_infinite"] = int(v.size - finite.size)
    return out


# ------------------------------------------------------------------ evaluation
def default_grid_faces(names: Sequence[str], count: int = GRID_FACES) -> list[str]:
    """A fixed, evenly spread choice of faces (the same for every model on the same data)."""
    if len(names) <= count:
        return list(names)
    idx = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in idx]


@dataclass
class _Run:
    """What one evaluation accumulates batch by batch."""

    translator: Any
    pool: ThreadPoolExecutor
    grid_names: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    grid_images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    sizes: set = field(default_factory=set)
    resized: int = 0
    align: str | None = None              # None: whole images (the literature's protocol)
    faces: int = 0                        # pairs scored on a face region (align given)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"translate": 0.0, "detect": 0.0,
                                                               "metrics": 0.0})

    def _decode_pairs(self, pairs: Pairs, sl: slice) -> tuple[list[str], list, list]:
        """The batch's decodable pairs; a damaged file skips its pair, named in the report."""
        names, ph, sk = [], [], []
        for name, fp, fs in zip(pairs.names[sl], pairs.photos[sl], pairs.sketches[sl]):
            try:
                p, s = imageio.decode(fp), imageio.decode(fs)
            except imageio.ImageError as exc:
                log.warning("skipping pair %s: %s", name, exc)
                self.skipped[name] = str(exc)
                continue
            names.append(name)
            ph.append(p)
            sk.append(s)
        return names, ph, sk

    def batch(self, pairs: Pairs, sl: slice) -> None:
        tr, t = self.translator, time.perf_counter()
        names, ph, sk = self._decode_pairs(pairs, sl)
        if not names:
            return
        regions = [face_region(p) for p in ph] if self.align else [None] * len(ph)
        self.faces += sum(r is not None for r in regions)
        crop_p = [crop_region(p, r, p) for p, r in zip(ph, regions)]
        crop_s = [crop_region(s, r, p) for s, p, r in zip(sk, ph, regions)]
        if self.align == "auto":           # the aligned crops are translated
            out_sk = tr.translate_batch(crop_p, "photo2sketch")
            out_ph = tr.translate_batch(crop_s, "sketch2photo")
        else:                              # whole images, then the same face region scored
            out_sk = tr.translate_batch(ph, "photo2sketch")
            out_ph = tr.translate_batch(sk, "sketch2photo")
            for o, p, r in [*zip(out_sk, ph, regions), *zip(out_ph, ph, regions)]:
                o.image = crop_region(o.image, r, p)
        # where a face region reaches past the photo's edge, that part is no face: the
        # target's fill there stands in for the translation in both modes (otherwise
        # "off" would score its own flat fill against the target's flat fill)
        for o_s, o_p, c_s, c_p, p, r in zip(out_sk, out_ph, crop_s, crop_p, ph, regions):
            if r is not None:
                outside = ~inside_mask(r, p)
                o_s.image = _fill_from(o_s.image, c_s, outside)
                o_p.image = _fill_from(o_p.image, c_p, outside)
        whole_p, whole_s, ph, sk = ph, sk, crop_p, crop_s
        self.seconds["translate"] += time.perf_counter() - t
        t = time.perf_counter()
        det_p = [tr.detect(x) for x in whole_p]  # the model's own detector, as "auto" uses it
        det_s = [tr.detect(x) for x in whole_s]
        self.seconds["detect"] += time.perf_counter() - t
        t = time.perf_counter()
        jobs = [self.pool.submit(score_pair, p, s, a.image, b.image, a.raw, b.raw, tr.image_size)
                for p, s, a, b in zip(ph, sk, out_sk, out_ph)]
        for k, name in enumerate(names):
            row = {"name": name, "subset": pairs.subsets.get(name), **jobs[k].result(),
                   "detector": {"photo": [det_p[k][0], round(float(det_p[k][1]), 4)],
                                "sketch": [det_s[k][0], round(float(det_s[k][1]), 4)]}}
            self.rows.append(row)
            self.sizes.add(ph[k].shape[:2])
            self.resized += ph[k].shape[:2] != sk[k].shape[:2]
            if name in self.grid_names:
                self.grid_images[name] = {"photo": ph[k], "sketch": sk[k],
                                          "gen_sketch": out_sk[k].image, "gen_photo": out_ph[k].image}
        self.seconds["metrics"] += time.perf_counter() - t


def face_region(photo: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The largest face of a photo as (crop -> photo transform, crop size), the region
    both align modes are scored on; None without a face (the whole image is scored)."""
    from runtime.align import finder
    f = finder()
    faces = f.detect(photo) if f is not None else []
    if not faces:
        return None
    al = f.align(photo, faces[0])
    return al.matrix, (al.crop.shape[1], al.crop.shape[0])


def crop_region(img: np.ndarray, region: tuple[np.ndarray, tuple[int, int]] | None,
                photo: np.ndarray) -> np.ndarray:
    """``img`` (the photo, its sketch or a translation; any size) cropped to the face
    region found on ``photo``, scaled for an image of another size than the photo."""
    if region is None:
        return img
    from facesketch.face import warp_crop
    matrix, size = region
    sx, sy = img.shape[1] / photo.shape[1], img.shape[0] / photo.shape[0]
    return warp_crop(img, np.diag([sx, sy]) @ matrix, size)


def inside_mask(region: tuple[np.ndarray, tuple[int, int]], photo: np.ndarray) -> np.ndarray:
    """HxW bool over a face region's crop: True where the crop pixel's centre comes from
    inside ``photo`` (False where warp_crop fills in past the edge)."""
    matrix, (w, h) = region
    ys, xs = np.mgrid[:h, :w]
    # PIL's affine transform samples the source at matrix @ (x + 0.5, y + 0.5)
    sx = matrix[0, 0] * (xs + 0.5) + matrix[0, 1] * (ys + 0.5) + matrix[0, 2]
    sy = matrix[1, 0] * (xs + 0.5) + matrix[1, 1] * (ys + 0.5) + matrix[1, 2]
    ph, pw = photo.shape[:2]
    return (sx >= 0) & (sx <= pw) & (sy >= 0) & (sy <= ph)


def _fill_from(out: np.ndarray, target: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``out`` with the pixels at ``where`` taken from ``target`` (both the crop's size)."""
    if not where.any():
        return out
    if out.shape != target.shape:
        raise ValueError(f"translation {out.shape} and target {target.shape} of one face "
                         "region differ in shape")
    out = out.copy()
    out[where] = target[where]
    return out


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {ALL: rows}
    for r in rows:
        if r["subset"]:
            groups.setdefault(r["subset"], []).append(r)
    out: dict[str, Any] = {"groups": groups, "metrics": {}, "input_vs_target": {}, "detector": {},
                           **{f"target_{m}": {} for m in GRID_MEASURES}}
    for direction, keys in METRIC_KEYS.items():
        out["metrics"][direction] = {g: _summary([r[direction] for r in rs], (*keys, *GRID_MEASURES))
                                     for g, rs in groups.items()}
        out["input_vs_target"][direction] = {g: _summary([r["input_vs_target"][direction] for r in rs],
                                                         keys) for g, rs in groups.items()}
        for m in GRID_MEASURES:
            out[f"target_{m}"][direction] = {
                g: _summary([{m: r[f"target_{m}"][direction]} for r in rs if f"target_{m}" in r], (m,))
                for g, rs in groups.items()}
    for g, rs in groups.items():
        wrong_p = [r["name"] for r in rs if r["detector"]["photo"][0] != "photo"]
        wrong_s = [r["name"] for r in rs if r["detector"]["sketch"][0] != "sketch"]
        out["detector"][g] = {"n_photos": len(rs), "n_sketches": len(rs),
                              "photo_accuracy": 1 - len(wrong_p) / len(rs),
                              "sketch_accuracy": 1 - len(wrong_s) / len(rs),
                              "accuracy": 1 - (len(wrong_p) + len(wrong_s)) / (2 * len(rs)),
                              "wrong_photos": wrong_p, "wrong_sketches": wrong_s}
    return out


DEFINITIONS = {
    "photo2sketch": "generated sketch vs the artist's sketch, grayscale (luma): SSIM, FSIM, PSNR",
    "sketch2photo": "generated photo vs the real photo: FSIMc (colour), FSIM and SSIM on luma, "
                    "PSNR over RGB",
    "ssim": "Wang et al. 2004: Gaussian window sigma 1.5, data range 255, population covariance, "
            "grayscale",
    "fsim": "Zhang et al. 2011 (FeatureSIM.m); FSIMc adds YIQ chroma",
    "size": "native: outputs are brought back to the input's size by the runtime",
    "input_vs_target": "the untranslated input scored against the target (doing nothing)",
    "checkerboard_db": "spectral power at the 2x upsampling grid's frequencies (periods 2 and 4 "
                       "model pixels) over their neighbourhood, dB, on the model's own pixel grid; "
                       "target_checkerboard_db: the same of the targets fitted to that grid",
    "cross_hatch": "share of fine-scale oriented energy (log-Gabor, wavelengths 6 and 12 px, 9x9 "
                   "neighbourhoods) in two crossing directions at once, 0..0.5: a regular lattice "
                   "scores high, strokes of one direction low; on the model's own pixel grid; "
                   "target_cross_hatch: the same of the targets fitted to that grid",
    "stroke": "photo -> sketch: mean L1 between the local structure tensors (stroke orientation "
              "as a doubled-angle vector, and gradient energy; Gaussian window sigma 3 px) of "
              "the translation and the artist's sketch, over the sketch's mean energy, at the "
              "sketch's size: free of phase, so strokes of the artist's directions a pixel or "
              "two off cost little, a crossing lattice much; lower is better",
}


def evaluate(model: str | os.PathLike, data: str | os.PathLike | None = None, *,
             photos: str | os.PathLike | None = None, sketches: str | os.PathLike | None = None,
             limit: int | None = None, backend: str = "auto", device: str = "auto",
             batch_size: int = 8, workers: int | None = None, grid: str | os.PathLike | None = None,
             grid_faces: Sequence[str] | None = None, per_image: bool = True,
             progress: Callable[[int, int], None] | None = None,
             align: str | None = None) -> dict[str, Any]:
    """Translate every test photo and sketch with ``model`` and score both directions.

    ``model``: a bundle folder or a checkpoint (runtime.Translator.load).
    ``limit``: the first N pairs (natural file-name order). ``grid``: write an
    image grid (input | ours | artist, both directions) there. ``progress``:
    called with (done, total) after each batch; default a progress bar with ETA
    on stderr. ``align``: None scores whole images (the literature's protocol);
    "auto" or "off" score the largest face's region, found on each photo and cut
    from the photo and its sketch alike, translating the aligned crop ("auto") or
    the whole image ("off"), so the two modes compare on the same pixels.
    Returns the report (JSON-serialisable); ``markdown(report)`` renders its table.
    """
    from runtime import Translator

    t_start = time.perf_counter()
    pairs = find_pairs(data, photos, sketches)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        pairs.names, pairs.photos, pairs.sketches = (pairs.names[:limit], pairs.photos[:limit],
                                                     pairs.sketches[:limit])
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if align not in (None, "auto", "off"):
        raise ValueError(f"unknown align mode {align!r}; use auto or off")
    model = Path(model)
    translator = Translator.load(model, backend=backend, device=device)
    workers = workers or min(4, os.cpu_count() or 1)
    n = len(pairs)
    log.info("evaluating %s (%s backend) on %d pairs from %s", model, translator.backend, n,
             pairs.photo_dir.parent)
    bar = None if progress else ProgressBar(n, "evaluate", unit="pairs")
    grid_names = list(grid_faces) if grid_faces is not None else default_grid_faces(pairs.names)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            run = _Run(translator, pool, grid_names, align=align)
            for start in range(0, n, batch_size):
                run.batch(pairs, slice(start, start + batch_size))
                done = min(start + batch_size, n)
                if progress:
                    progress(done, n)
                else:
                    bar.update(done)
        if not run.rows:
            raise ValueError(f"none of the {n} pairs could be read ({len(run.skipped)} skipped)")
        report = _report(run, pairs, model, translator, limit, grid, per_image,
                         time.perf_counter() - t_start, workers, batch_size)
    finally:
        if bar is not None:
            bar.close()
        translator.close()
    return report


def _report(run: _Run, pairs: Pairs, model: Path, translator: Any, limit: int | None,
            grid: str | os.PathLike | None, per_image: bool, total: float, workers: int,
            batch_size: int) -> dict[str, Any]:
    agg = _aggregate(run.rows)
    grid_path = None
    if grid is not None:
        ordered = [nm for nm in run.grid_names if nm in run.grid_images]
        grid_path = str(save_grid([run.grid_images[nm] for nm in ordered], ordered, grid))
    info, n, sec = translator.info(), len(run.rows), run.seconds
    report: dict[str, Any] = {
        "model": {"path": str(model), "kind": info.get("kind"), "hash": info.get("hash"),
                  "backend": translator.backend, "image_size": translator.image_size,
                  "detector": info.get("detector", "built-in"),
                  "card": info.get("model")},
        "data": {"photos": str(pairs.photo_dir), "sketches": str(pairs.sketch_dir), "pairs": n,
                 "limit": limit, "align": run.align, "face_regions": run.faces,
                 "native_sizes": sorted(f"{w}x{h}" for h, w in run.sizes),
                 "outputs_resized_to_target": run.resized, "skipped": run.skipped,
                 "subsets": {g: len(rs) for g, rs in agg["groups"].items() if g != ALL},
                 "unpaired": pairs.unpaired},
        "definitions": DEFINITIONS,
        "metrics": agg["metrics"],
        "input_vs_target": agg["input_vs_target"],
        **{f"target_{m}": agg[f"target_{m}"] for m in GRID_MEASURES},
        "detector": agg["detector"],
        "anchors": ANCHORS,
        "grid": {"path": grid_path, "faces": [nm for nm in run.grid_names if nm in run.grid_images]},
        "timing": {"seconds": round(total, 2), "translate_s": round(sec["translate"], 2),
                   "metrics_s": round(sec["metrics"], 2), "detector_s": round(sec["detect"], 2),
                   "pairs_per_s": round(n / total, 3) if total > 0 else None,
                   "workers": workers, "batch_size": batch_size},
    }
    if per_image:
        report["per_image"] = run.rows
    report["machine"] = sysinfo.machine()
    return _json_safe(report)


def _json_safe(v: Any) -> Any:
    """Plain JSON: infinite/NaN floats (PSNR of identical images) become None."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


# ------------------------------------------------------------------ outputs
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sizes(sizes: Sequence[str], show: int = 6) -> str:
    """The native sizes, or their count and range when there are many (aligned crops)."""
    if len(sizes) <= show:
        return ", ".join(sizes)
    area = sorted(sizes, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    return f"{len(sizes)} sizes, {area[0]} to {area[-1]}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: metrics per direction and subset beside the published
    anchors, what the untranslated input scores, and the detector's accuracy."""
    m = report["model"]
    lines = [f"Model `{m['path']}` ({m['kind']}, {m['image_size']}x{m['image_size']}, "
             f"backend {m['backend']}, detector {m['detector']}); "
             f"{report['data']['pairs']} pairs from `{report['data']['photos']}` at native size "
             f"({_sizes(report['data']['native_sizes'])}).", ""]
    if report["data"].get("align"):
        lines[-1:] = ["", f"Scored on the largest face's region (found on the photo in "
                      f"{report['data']['face_regions']} pairs, cut from photo and sketch alike; the "
                      f"others whole; where a region reaches past the photo's edge, that part is "
                      f"the target's fill in the translation too), translating {'the aligned crop' if report['data']['align'] == 'auto' else 'the whole image'} "
                      f"(--align {report['data']['align']}).", ""]
    lines += ["| direction | subset | n | SSIM | FSIM | FSIMc | PSNR (dB) | published FSIM |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for direction, by_group in report["metrics"].items():
        anchor = report["anchors"][direction]
        for g, s in by_group.items():
            lines.append(
                f"| {direction.replace('2', ' -> ')} | {g} | {s['n']} | {_fmt(s['ssim'])} | "
                f"{_fmt(s['fsim'])} | {_fmt(s.get('fsimc'))} | {_fmt(s['psnr'], 2)} | "
                f"{anchor['fsim']:.4f} |")
    a = report["anchors"]["photo2sketch"]
    lines += ["", f"Published anchors: {a['source']} on {a['dataset']} at {a['size']}x{a['size']}: "
              f"FSIM photo -> sketch {report['anchors']['photo2sketch']['fsim']:.4f}, "
              f"sketch -> photo {report['anchors']['sketch2photo']['fsim']:.4f}. "
              "Photo -> sketch is scored on grayscale; sketch -> photo's FSIMc is in colour.", ""]
    lines += ["Doing nothing (the input scored against the target):", "",
              "| direction | subset | SSIM | FSIM | FSIMc |", "| --- | --- | ---: | ---: | ---: |"]
    for direction, by_group in report["input_vs_target"].items():
        for g, s in by_group.items():
            lines.append(f"| {direction.replace('2', ' -> ')} | {g} | {_fmt(s['ssim'])} | "
                         f"{_fmt(s['fsim'])} | {_fmt(s.get('fsimc'))} |")
    ours = report["metrics"]
    if any("checkerboard_db" in ours[d][ALL] for d in ours):
        target = lambda d, m: report.get(f"target_{m}", {}).get(d, {}).get(ALL, {}).get(m)  # noqa: E731
        lines += ["", "Texture measures on the model's pixel grid: checkerboard (dB at the "
                  "upsampling grid's frequencies over their neighbours; about 0 = no dot pattern) "
                  "and cross-hatch (share of fine oriented energy in two crossing directions; "
                  "a lattice scores high); stroke distance (photo -> sketch, against the artist's "
                  "sketch at its size: local stroke orientation and energy, free of phase; "
                  "lower is better), ours and doing nothing's:", "",
                  "| direction | checkerboard ours | checkerboard target | cross-hatch ours | "
                  "cross-hatch target | stroke distance ours | doing nothing |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for d in ours:
            lines.append(f"| {d.replace('2', ' -> ')} | {_fmt(ours[d][ALL].get('checkerboard_db'), 2)} | "
                         f"{_fmt(target(d, 'checkerboard_db'), 2)} | "
                         f"{_fmt(ours[d][ALL].get('cross_hatch'), 3)} | {_fmt(target(d, 'cross_hatch'), 3)} | "
                         f"{_fmt(ours[d][ALL].get('stroke'), 3)} | "
                         f"{_fmt(report['input_vs_target'][d][ALL].get('stroke'), 3)} |")
    lines += ["", "Domain detector on the same images:", "",
              "| subset | photos right | sketches right | overall |", "| --- | ---: | ---: | ---: |"]
    for g, d in report["detector"].items():
        lines.append(f"| {g} | {d['photo_accuracy']:.1%} ({d['n_photos']}) | "
                     f"{d['sketch_accuracy']:.1%} ({d['n_sketches']}) | {d['accuracy']:.1%} |")
    t = report["timing"]
    lines += ["", f"Took {t['seconds']:.1f} s (translation {t['translate_s']:.1f} s, metrics "
              f"{t['metrics_s']:.1f} s)."]
    return "\n".join(lines) + "\n"


def save_grid(faces: Sequence[dict[str, np.ndarray]], names: Sequence[str],
              path: str | os.PathLike, cell: tuple[int, int] | None = None) -> Path:
    """One row per face: photo | our sketch | artist's sketch || artist's sketch |
    our photo | photo (input | ours | target for each direction)."""
    from PIL import Image, ImageDraw
    if not faces:
        raise ValueError("no faces for the grid")
    h, w = cell or faces[0]["photo"].shape[:2]
    header = 22
    cols = ("photo", "our sketch", "artist's sketch", "artist's sketch", "our photo", "photo")
    gap = 8
    width = 6 * w + gap
    canvas = Image.new("RGB", (width, header + len(faces) * h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(cols):
        x = c * w + (gap if c >= 3 else 0)
        draw.text((x + 4, 5), label, fill=(0, 0, 0))
    for r, (face, name) in enumerate(zip(faces, names)):
        row = [face["photo"], face["gen_sketch"], face["sketch"],
               face["sketch"], face["gen_photo"], face["photo"]]
        for c, img in enumerate(row):
            tile = Image.fromarray(img)
            if tile.size != (w, h):
                tile = tile.resize((w, h), Image.BICUBIC)
            canvas.paste(tile, (c * w + (gap if c >= 3 else 0), header + r * h))
        draw.text((4, header + r * h + 4), name, fill=(255, 0, 0))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
