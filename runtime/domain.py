"""Is an image a face photo or a face sketch? (numpy + PIL only, no torch).

``detect_domain(image) -> ("photo" | "sketch", confidence)``.

A mean-intensity rule cannot do this (on CUFS the best single threshold is
wrong on about one image in ten) and a saturation rule calls every grayscale
photo a sketch. The detector instead measures what makes a drawing a drawing,
whatever its colour:

* tone: after stretching the image between its 1st and 99th percentiles (so
  tinted paper, a grey scan or a dim photo all span 0..1), how much of it is
  near the paper white, how much is dark, where the median lies, and what the
  outer band looks like (paper or backdrop);
* texture: a drawing's non-white pixels are strokes, so their neighbourhoods
  vary; a photograph's are skin, hair and backdrop, mostly smooth. Local
  standard deviation of the non-paper pixels at 3x3 and 5x5, the share of flat
  mid-tone pixels, of thin dark strokes and of strong edges, and how heavy the
  tails of the fine detail are;
* colour, tint-invariant: how much the *chromaticity* (r, g, b over their
  sum) varies across the picture. Tinted paper multiplies every pixel by the
  same colour, so it has one chromaticity; a colour photo has many; a
  grayscale photo has none. The feature is clipped at zero below a small
  spread, so "no colour" is neutral and colour can only ever say "photo".

Uniform borders (scanner margins, frames, letterbox padding) are trimmed first
and the features are taken from the central part of what remains, at a fixed
working size. A logistic regression on the standardised features turns them
into a probability; its parameters (``DEFAULT_PARAMS``) were fitted on the
CUFS *training* images and augmented copies of them (grayscale, tinted paper,
borders, line drawings, JPEG, rescaling) by ``benchmarks/domain_detector.py``,
which also measures the detector on the CUFS test set.
``fit_detector`` refits them on a training run's own images (with the same
augmentations, so a refit keeps the robustness) and the trainer stores the
result in the checkpoint.
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from facesketch.imageio import ImageError, decode

DOMAINS = ("photo", "sketch")
WORK_SIZE = 96           # the short side the features are measured at
MAX_LONG_SIDE = 1024     # images with a longer side are reduced before any feature work
PARAMS_VERSION = 1
FLAT = 0.03             # gray-level span (0..1) below which an image is called blank
FEW_IMAGES = 200         # below this many training images a refit leans on DEFAULT_PARAMS

FEATURES = (
    "white_frac",        # share of pixels near the paper white (stretched tone > 0.85)
    "dark_frac",         # share of dark pixels (stretched tone < 0.25)
    "median_tone",       # median stretched tone
    "contrast",          # 99th - 1st percentile of the raw gray level (0..1)
    "flat_mid_3",        # share of mid-tone pixels whose 3x3 neighbourhood is flat (std < 0.02)
    "flat_mid_5",        # the same over 5x5
    "ink_std_median",    # median 3x3 std of the non-paper pixels (tone < 0.8)
    "ink_std_p25",       # its 25th percentile
    "ink_smooth_3",      # share of non-paper pixels with a flat 3x3 neighbourhood (std < 0.02)
    "ink_smooth_5",      # ... with a flat 5x5 neighbourhood (std < 0.03)
    "dark_smooth",       # share of dark pixels (tone < 0.3) in smooth (5x5 std < 0.05) areas
    "fine_detail",       # mean |tone - 3x3 mean|
    "detail_kurtosis",   # log kurtosis of tone - 3x3 mean (strokes: heavy tails)
    "stroke_frac",       # share of pixels much darker than their 5x5 surroundings
    "edge_frac",         # share of pixels with a strong gradient
    "border_tone",       # mean stretched tone of the outer band (paper vs backdrop)
    "colourfulness",     # log(90th pct chromaticity deviation / 0.02), 0 below: tint-invariant,
                         # and 0 for grayscale photos and tinted paper alike, so it can only
                         # ever say "photo"
)

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601 luma


# ------------------------------------------------------------------ helpers
def _as_rgb(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
            and image.shape[2] == 3:
        return image
    return decode(image)


def _resize_short(rgb: np.ndarray, short: int | None = None) -> np.ndarray:
    """Shrink (never enlarge: that would blur the pencil texture) to ``short`` pixels."""
    h, w = rgb.shape[:2]
    s = (short or WORK_SIZE) / min(h, w)
    if s >= 1:
        return rgb
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BOX))


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated (separable sums, float32)."""
    if r == 0:
        return x
    h, w = x.shape
    p = np.pad(x, r, mode="edge")
    k = 2 * r + 1
    rows = p[0:h].copy()
    for i in range(1, k):
        rows += p[i:i + h]
    out = rows[:, 0:w].copy()
    for j in range(1, k):
        out += rows[:, j:j + w]
    return out * np.float32(1.0 / (k * k))


def _trim_borders(gray: np.ndarray, tol: float = 0.025, max_frac: float = 0.4) -> tuple[int, int, int, int]:
    """Rows/columns to keep after removing flat outer lines (frames, margins, padding)."""
    h, w = gray.shape
    top, bottom, left, right = 0, h, 0, w
    lim_h, lim_w = int(h * max_frac), int(w * max_frac)
    row_std = gray.std(axis=1)
    col_std = gray.std(axis=0)
    while top < lim_h and row_std[top] < tol:
        top += 1
    while h - bottom < lim_h and row_std[bottom - 1] < tol:
        bottom -= 1
    while left < lim_w and col_std[left] < tol:
        left += 1
    while w - right < lim_w and col_std[right - 1] < tol:
        right -= 1
    return top, bottom, left, right


def _prepare(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (gray 0..1, rgb float 0..255) of the trimmed image at the working size.

    The work is bounded whatever the image's size or shape: a big image is first
    shrunk cheaply (integer box reduction), and so is one whose long side exceeds
    MAX_LONG_SIDE, whatever its short side (a thin strip of millions of pixels)."""
    h, w = rgb.shape[:2]
    k = max(min(h, w) // (2 * WORK_SIZE), -(-max(h, w) // MAX_LONG_SIDE))
    if k >= 2:                        # a big image: shrink cheaply before looking at it
        if min(h, w) // k < 8:
            raise ImageError(f"a {w}x{h} image is too thin a strip to tell a photo from a sketch")
        rgb = np.asarray(Image.fromarray(rgb).reduce(k))
    g0 = (rgb.astype(np.float32) @ _GRAY) * np.float32(1 / 255)
    t, b, l, r = _trim_borders(g0)
    # a second pass catches a frame inside a frame (e.g. white mat in a black border)
    t2, b2, l2, r2 = _trim_borders(g0[t:b, l:r])
    t, b, l, r = t + t2, t + b2, l + l2, l + r2
    if b - t < 16 or r - l < 16:      # the whole image is flat: keep it as it is
        t, b, l, r = 0, rgb.shape[0], 0, rgb.shape[1]
    small = _resize_short(np.ascontiguousarray(rgb[t:b, l:r]))
    f = small.astype(np.float32)
    return (f @ _GRAY) * np.float32(1 / 255), f


def extract_features(image: Any) -> np.ndarray:
    """The detector's feature vector (float64, in the order of ``FEATURES``)."""
    rgb = _as_rgb(image)
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise ImageError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to tell "
                         "a photo from a sketch (needs at least 8x8)")
    gray, frgb = _prepare(rgb)
    h, w = gray.shape
    mh, mw = int(h * 0.08), int(w * 0.08)
    inner = (slice(mh, h - mh), slice(mw, w - mw))   # the face, not the margins
    lo, hi = np.percentile(gray, [1, 99])
    span = max(float(hi - lo), 1e-3)
    tone = np.clip((gray - lo) / span, 0.0, 1.0)
    t2 = tone * tone
    m1, m2 = _box(tone, 1), _box(tone, 2)
    s1 = np.sqrt(np.maximum(_box(t2, 1) - m1 * m1, 0.0))[inner]
    s2 = np.sqrt(np.maximum(_box(t2, 2) - m2 * m2, 0.0))[inner]
    c = tone[inner]
    n = c.size

    white = float((c > 0.85).mean())
    dark_mask = c < 0.3
    mid = (c > 0.15) & (c < 0.85)
    ink = c < 0.8
    n_ink = int(ink.sum())
    if n_ink >= 16:
        ink_s1 = s1[ink]
        ink_med = float(np.median(ink_s1))
        ink_p25 = float(np.percentile(ink_s1, 25))
        ink_sm3 = float((ink_s1 < 0.02).mean())
        ink_sm5 = float((s2[ink] < 0.03).mean())
    else:                       # (almost) blank paper
        ink_med, ink_p25, ink_sm3, ink_sm5 = 0.1, 0.05, 0.0, 0.0
    dark_smooth = float((dark_mask & (s2 < 0.05)).sum() / max(int(dark_mask.sum()), 1))

    detail = (tone - m1)[inner]
    fine = float(np.abs(detail).mean())
    d2 = float((detail * detail).mean())
    kurt = math.log(float((detail ** 4).mean()) / (d2 * d2 + 1e-12) + 1e-6) if d2 > 0 else 0.0
    stroke = float(((tone - m2)[inner] < -0.08).mean())
    gy, gx = np.gradient(tone)
    edge = float((np.hypot(gx, gy)[inner] > 0.1).mean())

    band = np.ones_like(tone, dtype=bool)
    band[inner] = False
    border_tone = float(tone[band].mean()) if band.any() else float(np.median(c))

    sub = frgb[::2, ::2].reshape(-1, 3)      # every 4th pixel is plenty for colour
    ssum = sub.sum(axis=1)
    ok = ssum > 0.15 * 3 * 255                # chromaticity of very dark pixels is noise
    if ok.sum() >= 16:
        rg = (sub[ok, 0] - sub[ok, 1]) / ssum[ok]   # two chromaticity coordinates
        bg = (sub[ok, 2] - sub[ok, 1]) / ssum[ok]
        dev = np.abs(rg - np.median(rg)) + np.abs(bg - np.median(bg))
        spread = float(np.percentile(dev, 90))
    else:
        spread = 0.0

    return np.array([
        white, float((c < 0.25).mean()), float(np.median(c)), span,
        float((mid & (s1 < 0.02)).sum() / n), float((mid & (s2 < 0.02)).sum() / n),
        ink_med, ink_p25, ink_sm3, ink_sm5, dark_smooth,
        fine, kurt, stroke, edge, border_tone, max(0.0, math.log((spread + 1e-6) / 0.02)),
    ], dtype=np.float64)


# ------------------------------------------------------------ augmentations
# Used to fit the detector (here and in benchmarks/domain_detector.py) so that it
# sees grayscale photos, tinted paper, frames, line drawings, recompression and
# rescaling even when its training images have none of them. numpy + PIL only.
PHOTO_AUGMENTATIONS = ("gray", "gray_tint", "white_bg", "border", "jpeg", "small", "large",
                       "noise", "contrast")
SKETCH_AUGMENTATIONS = ("tint", "faint", "border", "jpeg", "small", "large")
# derived from a photo, labelled sketch
DRAWING_AUGMENTATIONS = ("line", "dodge")


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) @ _GRAY + 0.5, 0, 255).astype(np.uint8)


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
    g = _box(_box(g, 1), 1)
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    edges = mag > np.percentile(mag, rng.uniform(82, 93))
    ink = rng.uniform(0, 70)
    out = np.where(edges, ink, rng.uniform(235, 255)).astype(np.float32)
    out = _box(out, 0) if rng.random() < 0.5 else 0.5 * out + 0.5 * _box(out, 1)
    return np.repeat(_u8(out)[:, :, None], 3, axis=2)


def pencil_dodge(rgb: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The classic 'photo to pencil sketch' filter: colour-dodge gray over its blurred negative."""
    rng = rng or np.random.default_rng(0)
    g = _luma_u8(rgb).astype(np.float32)
    r = int(rng.integers(2, 6))
    blur = _box(_box(255.0 - g, r), r)
    out = np.minimum(255.0, g * 255.0 / np.maximum(255.0 - blur, 1.0))
    return np.repeat(_u8(out)[:, :, None], 3, axis=2)


def augment(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of an HxWx3 uint8 image (see the *_AUGMENTATIONS tuples)."""
    f = rgb.astype(np.float32)
    if kind == "gray":
        return np.repeat(_luma_u8(rgb)[:, :, None], 3, axis=2)
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


# ---------------------------------------------------------------- detecting
def _check_params(params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    if not isinstance(params, dict):
        raise ValueError(f"detector params must be a dict, got {type(params).__name__}")
    missing = [k for k in ("features", "mean", "std", "weights", "bias") if k not in params]
    if missing:
        raise ValueError(f"detector params lack {', '.join(missing)}")
    if list(params["features"]) != list(FEATURES):
        raise ValueError(f"detector params were fitted on features {list(params['features'])}, "
                         f"this version computes {list(FEATURES)}; refit them with fit_detector")
    if params.get("work_size", WORK_SIZE) != WORK_SIZE:
        raise ValueError(f"detector params were fitted at work size {params['work_size']}, "
                         f"this version uses {WORK_SIZE}")
    mean, std, w = (np.asarray(params[k], dtype=np.float64) for k in ("mean", "std", "weights"))
    if not (mean.shape == std.shape == w.shape == (len(FEATURES),)):
        raise ValueError(f"detector params need {len(FEATURES)} values in mean, std and weights")
    return mean, std, w, float(params["bias"])


def sketch_probability(image: Any, params: dict | None = None) -> float:
    """P(sketch) for one image under the detector's logistic model."""
    mean, std, w, b = _check_params(DEFAULT_PARAMS if params is None else params)
    f = extract_features(image)
    if f[FEATURES.index("contrast")] < FLAT:
        return 0.5              # a blank or nearly uniform image is neither
    z = (f - mean) / std
    s = float(np.clip(z @ w + b, -60, 60))
    return 1.0 / (1.0 + math.exp(-s))


def detect_domain(image: Any, params: dict | None = None) -> tuple[str, float]:
    """("photo" | "sketch", confidence in [0.5, 1]) for one image.

    ``image``: bytes, a path, a PIL image or an array (anything
    ``facesketch.imageio.decode`` accepts). ``params``: from ``fit_detector``
    (e.g. a checkpoint's ``detector``); the built-in ``DEFAULT_PARAMS`` when None.
    Raises ``ImageError`` for an input that is not a usable image.
    """
    p = sketch_probability(image, params)
    return ("sketch", p) if p > 0.5 else ("photo", 1.0 - p)


# BEGIN DEFAULT_PARAMS -- generated by `python benchmarks/domain_detector.py --write`
# (fitted on CUFS train_photos/train_sketches and their augmentations only)
DEFAULT_PARAMS: dict = {
    "version": 1,
    "features": [
        "white_frac",
        "dark_frac",
        "median_tone",
        "contrast",
        "flat_mid_3",
        "flat_mid_5",
        "ink_std_median",
        "ink_std_p25",
        "ink_smooth_3",
        "ink_smooth_5",
        "dark_smooth",
        "fine_detail",
        "detail_kurtosis",
        "stroke_frac",
        "edge_frac",
        "border_tone",
        "colourfulness"
    ],
    "work_size": 96,
    "mean": [
        0.35651190467753713,
        0.2315162080900012,
        0.6900876977718097,
        0.7647343944845384,
        0.0828774776283127,
        0.04414066316062052,
        0.07131635811113794,
        0.044838332740200264,
        0.16406251031966732,
        0.14303022373315424,
        0.3214727916741647,
        0.03220491856305001,
        2.301418938846235,
        0.10684494961416127,
        0.20976112472579816,
        0.7091815784619283,
        1.040450220597538
    ],
    "std": [
        0.20449460260045088,
        0.1218768347322808,
        0.20832673412396308,
        0.14250632161009058,
        0.1063367891612049,
        0.07629460097990068,
        0.06300436330090783,
        0.04886967567250728,
        0.17325153773846577,
        0.15755044103901933,
        0.23898529131936083,
        0.012395337667772515,
        0.4146284325393723,
        0.03557312109833406,
        0.06821974974646323,
        0.21564283824542685,
        1.3228132995512512
    ],
    "weights": [
        0.9100522377003065,
        0.48998299745748414,
        0.8263263239467175,
        -0.08888473534213902,
        -0.9173317213223184,
        -0.4460655303513955,
        0.47189871556912777,
        0.5138510738739636,
        -1.324179164809765,
        -1.013561279533319,
        -0.44130836055490696,
        0.43273540209665684,
        -1.4325781907811141,
        0.4189486158098723,
        0.49228019195985406,
        0.7591284612766946,
        -1.4083693901341583
    ],
    "bias": -0.5853350681747704,
    "fitted_on": {
        "photos": 268,
        "sketches": 268,
        "photos_used": 268,
        "sketches_used": 268,
        "samples": 4020,
        "augmentations_per_image": 6,
        "l2": 0.001,
        "seed": 0
    },
    "train_accuracy": {
        "photo": 0.9989339019189766,
        "sketch": 1.0
    }
}
# END DEFAULT_PARAMS
