"""Fitting the photo/sketch detector (facesketch.domain) on a run's own images.

``fit_detector`` measures the detector's features on photos and sketches and on
augmented copies of them (grayscale photos, tinted paper, frames, line drawings,
recompression, rescaling: kinds of input the training data may lack) and fits
the logistic model by Newton steps. The trainer stores the result in the
checkpoint; ``benchmarks/domain_detector.py`` uses the same code to make
facesketch.domain.DEFAULT_PARAMS. numpy + PIL only.
"""

from __future__ import annotations

import copy
import io
from typing import Sequence

import numpy as np
from PIL import Image

from facesketch.domain import (DEFAULT_PARAMS, FEATURES, LUMA, PARAMS_VERSION, WORK_SIZE, box_mean,
                               extract_features)

FEW_IMAGES = 200         # below this many training images a refit leans on DEFAULT_PARAMS

# ------------------------------------------------------------ augmentations
# Used to fit the detector (here and by benchmarks/domain_detector.py) so that it
# sees grayscale photos, tinted paper, frames, line drawings, recompression and
# rescaling even when its training images have none of them. numpy + PIL only.
PHOTO_AUGMENTATIONS = ("gray", "gray_tint", "white_bg", "border", "jpeg", "small", "large",
                       "noise", "contrast")
SKETCH_AUGMENTATIONS = ("tint", "faint", "border", "jpeg", "small", "large")
GRAY_WEIGHTS = ((0.299, 0.587, 0.114), (0.2126, 0.7152, 0.0722), (1 / 3, 1 / 3, 1 / 3))
# derived from a photo, labelled sketch
DRAWING_AUGMENTATIONS = ("line", "dodge")


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) @ LUMA + 0.5, 0, 255).astype(np.uint8)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _rescale(rgb: np.ndarray, s: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    nh, nw = max(16, round(h * s)), max(16, round(w * s))
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC))


def _paper(rng: np.random.Generator) -> np.ndarray:
    """A random paper colour: cream, yellowed, grey, bluish or pinkish."""
    base = [(255, 246, 222), (240, 226, 190), (215, 215, 212), (228, 236, 245),
            (250, 232, 228), (236, 222, 200)][rng.integers(0, 6)]
    return np.clip(np.array(base, np.float32) + rng.normal(0, 6, 3), 120, 255)


def add_border(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad with a frame (black scanner edge, white margin, grey mat, or any colour)."""
    h, w = rgb.shape[:2]
    kind = rng.integers(0, 4)
    colour = [(0, 0, 0), (255, 255, 255), (128, 128, 128),
              tuple(int(v) for v in rng.integers(0, 256, 3))][kind]
    sides = [int(round(d * rng.uniform(0.0, 0.2))) for d in (h, h, w, w)]
    if max(sides) < 3:
        sides[rng.integers(0, 4)] = int(0.1 * min(h, w))
    t, b, l, r = sides
    out = np.empty((h + t + b, w + l + r, 3), np.float32)
    out[:] = colour
    out += rng.normal(0, 3 if kind != 1 else 1, (out.shape[0], out.shape[1], 1))
    out[t:t + h, l:l + w] = rgb
    return _u8(out)


def _white_background(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace a flat backdrop reachable from the image edge by white/light grey."""
    f = rgb.astype(np.float32)
    edge = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    ref = np.median(edge, axis=0)
    close = np.abs(f - ref).sum(axis=2) < 60
    # reachable from an edge along its row or its column through backdrop pixels
    reach = (np.cumprod(close, axis=1) | np.cumprod(close[:, ::-1], axis=1)[:, ::-1]
             | np.cumprod(close, axis=0) | np.cumprod(close[::-1], axis=0)[::-1]).astype(bool)
    out = f.copy()
    out[reach] = rng.uniform(225, 255)
    return _u8(out)


def line_drawing(rgb: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Black lines on white from the strong edges of an image (a 'line drawing')."""
    rng = rng or np.random.default_rng(0)
    g = _luma_u8(rgb).astype(np.float32)
    g = box_mean(box_mean(g, 1), 1)
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    edges = mag > np.percentile(mag, rng.uniform(82, 93))
    ink = rng.uniform(0, 70)
    out = np.where(edges, ink, rng.uniform(235, 255)).astype(np.float32)
    out = box_mean(out, 0) if rng.random() < 0.5 else 0.5 * out + 0.5 * box_mean(out, 1)
    return np.repeat(_u8(out)[:, :, None], 3, axis=2)


def pencil_dodge(rgb: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The classic 'photo to pencil sketch' filter: colour-dodge gray over its blurred negative."""
    rng = rng or np.random.default_rng(0)
    g = _luma_u8(rgb).astype(np.float32)
    r = int(rng.integers(2, 6))
    blur = box_mean(box_mean(255.0 - g, r), r)
    out = np.minimum(255.0, g * 255.0 / np.maximum(255.0 - blur, 1.0))
    return np.repeat(_u8(out)[:, :, None], 3, axis=2)


def augment(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of an HxWx3 uint8 image (see the *_AUGMENTATIONS tuples)."""
    f = rgb.astype(np.float32)
    if kind == "gray":             # grayscale conversions differ: BT.601, BT.709, plain mean, any mix
        w = GRAY_WEIGHTS[int(rng.integers(0, len(GRAY_WEIGHTS)))] \
            if rng.random() < 0.75 else rng.dirichlet((4.0, 6.0, 2.0))
        g = np.clip(rgb.astype(np.float32) @ np.asarray(w, np.float32) + 0.5, 0, 255).astype(np.uint8)
        gray = np.repeat(g[:, :, None], 3, axis=2)
        # a grayscale photo is rarely only that: half of them also get another
        # photometric change (high-key exposure, a white studio backdrop, noise, JPEG)
        if rng.random() < 0.5:
            gray = augment(gray, str(rng.choice(("contrast", "white_bg", "noise", "jpeg"))), rng)
        return gray
    if kind == "gray_tint":        # an old toned print: grayscale times a warm/cool colour
        tint = _paper(rng) / 255.0
        return _u8(_luma_u8(rgb)[:, :, None].astype(np.float32) * tint)
    if kind == "white_bg":
        return _white_background(rgb, rng)
    if kind == "border":
        return add_border(rgb, rng)
    if kind == "jpeg":
        return _jpeg(rgb, int(rng.integers(15, 60)))
    if kind == "small":
        return _rescale(rgb, rng.uniform(0.35, 0.7))
    if kind == "large":
        return _rescale(rgb, rng.uniform(1.5, 3.0))
    if kind == "noise":
        return _u8(f + rng.normal(0, rng.uniform(3, 10), f.shape))
    if kind == "contrast":
        if rng.random() < 0.3:     # over-exposed, high-key: highlights clip to white
            return _u8(f * rng.uniform(1.15, 1.6) + rng.uniform(0, 25))
        gamma = rng.uniform(0.6, 1.6)
        lo, hi = rng.uniform(0, 40), rng.uniform(200, 255)
        return _u8(lo + (hi - lo) * (f / 255.0) ** gamma)
    if kind == "tint":             # drawn on coloured paper: the paper colour multiplies
        return _u8(f * (_paper(rng) / 255.0)[None, None, :])
    if kind == "faint":            # a light, low-contrast scan
        paper = _paper(rng)
        k = rng.uniform(0.35, 0.8)
        return _u8(paper - (255.0 - f) * k * paper / 255.0)
    if kind == "line":
        return line_drawing(rgb, rng)
    if kind == "dodge":
        return pencil_dodge(rgb, rng)
    raise ValueError(f"unknown augmentation {kind!r}; known: "
                     f"{', '.join(PHOTO_AUGMENTATIONS + SKETCH_AUGMENTATIONS + DRAWING_AUGMENTATIONS)}")



# ------------------------------------------------------------------ fitting
def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float, w0: np.ndarray | None = None,
                  iters: int = 100) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by damped Newton steps (IRLS); x standardised.

    The penalty pulls the weights towards ``w0`` (zeros by default); the bias
    gets only a token penalty so separable data cannot push it to infinity.
    Each step is halved until the penalised loss decreases. Returns (weights, bias).
    """
    # einsum, not @: a multi-threaded BLAS call on these small matrices can be 100x
    # slower on a busy machine (e.g. inside the trainer) than a plain loop
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    prior = np.zeros(d + 1) if w0 is None else np.append(w0, 0.0)
    reg = np.full(d + 1, l2 * n)
    reg[-1] = 1e-4 * n
    if w0 is not None:   # few images: a prior worth ~10 samples per weight keeps the defaults
        reg[:-1] += 10.0

    def loss(beta: np.ndarray) -> float:
        z = np.einsum("ij,j->i", xa, beta)
        # log(1 + e^z) - y z, computed stably
        return float((np.logaddexp(0.0, z) - y * z).sum() + 0.5 * (reg * (beta - prior) ** 2).sum())

    beta = prior.copy()
    cur = loss(beta)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(np.einsum("ij,j->i", xa, beta), -40, 40)))
        grad = np.einsum("ij,i->j", xa, p - y) + reg * (beta - prior)
        hess = np.einsum("ij,i,ik->jk", xa, p * (1 - p), xa) + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            new = loss(beta - t * step)
            if new <= cur:
                break
            t *= 0.5
        beta -= t * step
        done = cur - new < 1e-10 * max(1.0, abs(cur))
        cur = new
        if done:
            break
    return beta[:-1], float(beta[-1])


def augmented_set(photos: Sequence[np.ndarray], sketches: Sequence[np.ndarray], per_image: int,
                  rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Originals plus ``per_image`` random augmentations each -> (images, labels 1=sketch)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for img in photos:
        images.append(img)
        labels.append(0)
        for kind in rng.choice(PHOTO_AUGMENTATIONS, per_image, replace=False):
            images.append(augment(img, str(kind), rng))
            labels.append(0)
        # a drawing made from this photo is a sketch
        images.append(augment(img, str(rng.choice(DRAWING_AUGMENTATIONS)), rng))
        labels.append(1)
    for img in sketches:
        images.append(img)
        labels.append(1)
        for kind in rng.choice(SKETCH_AUGMENTATIONS, per_image, replace=False):
            images.append(augment(img, str(kind), rng))
            labels.append(1)
    return images, np.array(labels, dtype=np.float64)


def fit_detector(photos_u8: np.ndarray | Sequence[np.ndarray],
                 sketches_u8: np.ndarray | Sequence[np.ndarray], *,
                 per_image: int = 1, max_images: int | None = 150, l2: float = 1e-3,
                 seed: int = 0) -> dict:
    """Fit the detector's parameters on photos and sketches (N x H x W x 3 uint8 each).

    At most ``max_images`` of each (a random subset; None: all) are used, which
    is plenty for 17 weights and keeps the fit to a few seconds. Each image is
    used as it is and in ``per_image`` random augmented copies
    (grayscale, tint, frame, JPEG, rescale ...; every photo also yields a line
    drawing or a pencil-filter sketch labelled sketch), so the refitted detector
    keeps working on kinds of input the training data lacks. With few images,
    the penalty pulls the weights towards ``DEFAULT_PARAMS`` rather than towards
    zero. Images smaller than the working size (``WORK_SIZE`` on the short
    side) cannot be measured at the detector's scale: then the built-in
    parameters come back unchanged, with a ``refit_skipped`` reason.
    Returns a JSON-serialisable dict for ``detect_domain(..., params=)``.
    """
    photos = [np.asarray(p, dtype=np.uint8) for p in photos_u8]
    sketches = [np.asarray(s, dtype=np.uint8) for s in sketches_u8]
    if not photos or not sketches:
        raise ValueError(f"fit_detector needs photos and sketches, got {len(photos)} photos "
                         f"and {len(sketches)} sketches")
    for name, group in (("photo", photos), ("sketch", sketches)):
        for i, a in enumerate(group):
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"{name} {i}: expected an HxWx3 uint8 array, got shape {a.shape}")
    short = int(np.median([min(a.shape[:2]) for a in photos + sketches]))
    if short < WORK_SIZE and DEFAULT_PARAMS:
        # Texture is measured at a working size of WORK_SIZE pixels; images this small
        # cannot show it at that scale, and a fit on them would misjudge normal inputs.
        params = copy.deepcopy(DEFAULT_PARAMS)
        params["refit_skipped"] = (f"training images are {short} px on their short side, below the "
                                   f"detector's {WORK_SIZE} px working size: kept the built-in fit")
        return params
    rng = np.random.default_rng(seed)
    given = (len(photos), len(sketches))
    if max_images is not None:
        photos = [photos[i] for i in sorted(rng.permutation(len(photos))[:max_images])]
        sketches = [sketches[i] for i in sorted(rng.permutation(len(sketches))[:max_images])]
    images, y = augmented_set(photos, sketches, per_image, rng)
    x = np.stack([extract_features(img) for img in images])
    default = DEFAULT_PARAMS
    if len(photos) + len(sketches) < FEW_IMAGES and default.get("features") == list(FEATURES):
        # few images: keep the built-in scaling and shrink towards the built-in weights
        mean, std = np.array(default["mean"]), np.array(default["std"])
        w0 = np.array(default["weights"])
    else:
        mean, std, w0 = x.mean(axis=0), x.std(axis=0) + 1e-6, None
    z = (x - mean) / std
    w, b = _logistic_fit(z, y, l2, w0)
    pred = np.einsum("ij,j->i", z, w) + b > 0
    return {
        "version": PARAMS_VERSION,
        "features": list(FEATURES),
        "work_size": WORK_SIZE,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "weights": [float(v) for v in w],
        "bias": float(b),
        "fitted_on": {"photos": given[0], "sketches": given[1], "photos_used": len(photos),
                      "sketches_used": len(sketches), "samples": int(len(y)),
                      "augmentations_per_image": int(per_image), "l2": float(l2), "seed": int(seed)},
        "train_accuracy": {"photo": float((~pred[y == 0]).mean()),
                           "sketch": float(pred[y == 1].mean())},
    }
