"""Is an image a face photo or a face sketch? (numpy + PIL + onnxruntime, no torch).

``detect_domain(image) -> ("photo" | "sketch", confidence)``.

The built-in detector is a small CNN (``facesketch/models/domain/detector.onnx``,
126 k weights, ~2-3 ms per image on one core) that looks at the picture itself:
pencil strokes, paper, skin, backdrop. It is fitted by ``training.domain_cnn``
(run by ``benchmarks/domain_detector.py``) on CUFS train, the even-numbered FS2K
pairs and augmented copies of them, and measured on CUFS test and the odd-numbered
FS2K pairs. Where it cannot run (no onnxruntime, the file missing or damaged) the
hand-made features below and their logistic model answer instead; that model is
also what a training run refits on its own images (``method="features"``).

A mean-intensity rule cannot do this (on CUFS the best single threshold is
wrong on about one image in ten) and a saturation rule calls every grayscale
photo a sketch. The features' model measures what makes a drawing a drawing,
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
CUFS *training* images, half of the FS2K in-the-wild pairs and augmented copies of them (grayscale, tinted paper,
borders, line drawings, JPEG, rescaling) by ``benchmarks/domain_detector.py``,
which also measures the detector on the CUFS test set.
``training.detector.fit_detector`` refits them on a training run's own images
(with the same augmentations, so a refit keeps the robustness) and the trainer
stores the result in the checkpoint. Inference lives here, in the torch-free
core, so the runtime, the web API and evaluate all give one model's one answer.
"""


from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .imageio import ImageError, decode

DOMAINS = ("photo", "sketch")
WORK_SIZE = 96           # the short side the features are measured at
MAX_LONG_SIDE = 1024     # images with a longer side are reduced before any feature work
PARAMS_VERSION = 1
FLAT = 0.03             # gray-level span (0..1) below which an image is called blank

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

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601 luma


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


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
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
    """-> (gray 0..1, rgb float 0..255) of the trimmed image at the working size
    (what both the features and the CNN look at).

    The work is bounded whatever the image's size or shape: a big image is first
    shrunk cheaply (integer box reduction), and so is one whose long side exceeds
    MAX_LONG_SIDE, whatever its short side (a thin strip of millions of pixels)."""
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        raise ImageError(f"image of {w}x{h} pixels is too small to tell "
                         "a photo from a sketch (needs at least 8x8)")
    k = max(min(h, w) // (2 * WORK_SIZE), -(-max(h, w) // MAX_LONG_SIDE))
    if k >= 2:                        # a big image: shrink cheaply before looking at it
        if min(h, w) // k < 8:
            raise ImageError(f"a {w}x{h} image is too thin a strip to tell a photo from a sketch")
        rgb = np.asarray(Image.fromarray(rgb).reduce(k))
    g0 = (rgb.astype(np.float32) @ LUMA) * np.float32(1 / 255)
    t, b, l, r = _trim_borders(g0)
    # a second pass catches a frame inside a frame (e.g. white mat in a black border)
    t2, b2, l2, r2 = _trim_borders(g0[t:b, l:r])
    t, b, l, r = t + t2, t + b2, l + l2, l + r2
    if b - t < 16 or r - l < 16:      # the whole image is flat: keep it as it is
        t, b, l, r = 0, rgb.shape[0], 0, rgb.shape[1]
    small = _resize_short(np.ascontiguousarray(rgb[t:b, l:r]))
    f = small.astype(np.float32)
    return (f @ LUMA) * np.float32(1 / 255), f


def extract_features(image: Any) -> np.ndarray:
    """The detector's feature vector (float64, in the order of ``FEATURES``)."""
    gray, frgb = _prepare(_as_rgb(image))
    h, w = gray.shape
    mh, mw = int(h * 0.08), int(w * 0.08)
    inner = (slice(mh, h - mh), slice(mw, w - mw))   # the face, not the margins
    lo, hi = np.percentile(gray, [1, 99])
    span = max(float(hi - lo), 1e-3)
    tone = np.clip((gray - lo) / span, 0.0, 1.0)
    t2 = tone * tone
    m1, m2 = box_mean(tone, 1), box_mean(tone, 2)
    s1 = np.sqrt(np.maximum(box_mean(t2, 1) - m1 * m1, 0.0))[inner]
    s2 = np.sqrt(np.maximum(box_mean(t2, 2) - m2 * m2, 0.0))[inner]
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





# ---------------------------------------------------------------- detecting
# ------------------------------------------------------------- the network
# The built-in detector: a small CNN (training.domain_cnn) that looks at the pencil
# texture itself, on onnxruntime. The logistic model above is its fallback where
# onnxruntime or the file is missing, and what a training run refits on its own data.
CNN_PATH = Path(__file__).resolve().parent / "models" / "domain" / "detector.onnx"
CNN_MAX_ASPECT = 1.6     # the network sees at most WORK_SIZE x 1.6*WORK_SIZE (centre crop)
METHODS = ("auto", "cnn", "features")


class DetectorUnavailable(RuntimeError):
    """The CNN detector cannot run here (no onnxruntime, file missing or damaged)."""


def cnn_input(image: Any) -> np.ndarray:
    """The network's input (see _cnn_input)."""
    return _cnn_input(image)[0]


def _cnn_input(image: Any) -> tuple[np.ndarray, float]:
    """(x, raw tone span). x: the network's input for one image: 3 x H x W float32 (short side WORK_SIZE or the
    image's own when smaller, borders trimmed, tone stretched between its 1st and 99th
    luma percentiles, centred at 0). Work bounded as for ``extract_features``."""
    gray, frgb = _prepare(_as_rgb(image))
    h, w = gray.shape
    lim = int(min(h, w) * CNN_MAX_ASPECT)
    if h > lim:
        t = (h - lim) // 2
        gray, frgb = gray[t:t + lim], frgb[t:t + lim]
    if w > lim:
        t = (w - lim) // 2
        gray, frgb = gray[:, t:t + lim], frgb[:, t:t + lim]
    lo, hi = np.percentile(gray, [1, 99])
    raw = float(hi - lo)
    span = max(raw, FLAT)
    x = np.clip((frgb * np.float32(1 / 255) - np.float32(lo)) / np.float32(span), -0.25, 1.25) - 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32), raw


class _Network:
    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorUnavailable(f"onnxruntime is not installed ({exc})") from exc
        if not path.is_file():
            raise DetectorUnavailable(f"detector model {path.name} is missing from {path.parent}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file: say so, the caller falls back
            raise DetectorUnavailable(f"detector model {path.name} does not load: {exc}") from exc
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input = self.session.get_inputs()[0].name

    def probability(self, x: np.ndarray) -> float:
        logit = float(np.asarray(self.session.run(None, {self.input: x[None]})[0]).reshape(-1)[0])
        return 1.0 / (1.0 + math.exp(-float(np.clip(logit, -60, 60))))


_NETWORKS: dict[Path, "_Network | DetectorUnavailable"] = {}
_NET_LOCK = threading.Lock()


def network(path: str | Path | None = None) -> _Network:
    """The CNN detector (loaded once per process); raises DetectorUnavailable."""
    p = Path(path) if path else CNN_PATH
    with _NET_LOCK:
        if p not in _NETWORKS:
            try:
                _NETWORKS[p] = _Network(p)
            except DetectorUnavailable as exc:
                _NETWORKS[p] = exc
        got = _NETWORKS[p]
    if isinstance(got, DetectorUnavailable):
        raise got
    return got


def method_used(method: str = "auto") -> str:
    """What ``detect_domain(..., method=method)`` runs here: "cnn" or "features" (with why)."""
    if method not in METHODS:
        raise ValueError(f"unknown detector method {method!r}; choose from {', '.join(METHODS)}")
    if method == "features":
        return "features"
    try:
        network()
        return "cnn"
    except DetectorUnavailable as exc:
        if method == "cnn":
            raise
        return f"features (CNN unavailable: {exc})"


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


def sketch_probability(image: Any, params: dict | None = None, method: str = "auto",
                       network_path: str | Path | None = None) -> float:
    """P(sketch) for one image: by the CNN ("cnn"; ``network_path``, default the
    built-in one), by the logistic model on the features with ``params``
    ("features"), or the CNN where it can run, else the features ("auto")."""
    if method not in METHODS:
        raise ValueError(f"unknown detector method {method!r}; choose from {', '.join(METHODS)}")
    mean, std, w, b = _check_params(DEFAULT_PARAMS if params is None else params)
    if method != "features":
        try:
            net = network(network_path)
        except DetectorUnavailable:
            if method == "cnn":
                raise
        else:
            x, raw_span = _cnn_input(image)
            if raw_span < FLAT:
                return 0.5      # a blank or nearly uniform image is neither
            return net.probability(x)
    f = extract_features(image)
    if f[FEATURES.index("contrast")] < FLAT:
        return 0.5              # a blank or nearly uniform image is neither
    z = (f - mean) / std
    s = float(np.clip(z @ w + b, -60, 60))
    return 1.0 / (1.0 + math.exp(-s))


def detect_domain(image: Any, params: dict | None = None, method: str = "auto") -> tuple[str, float]:
    """("photo" | "sketch", confidence in [0.5, 1]) for one image.

    ``image``: bytes, a path, a PIL image or an array (anything
    ``facesketch.imageio.decode`` accepts). ``method``: "auto" (the built-in CNN,
    or the features' logistic model where the CNN cannot run), "cnn" or "features".
    ``params``: the logistic model's, from ``fit_detector`` (e.g. a checkpoint's
    ``detector``); the built-in ``DEFAULT_PARAMS`` when None.
    Raises ``ImageError`` for an input that is not a usable image.
    """
    p = sketch_probability(image, params, method)
    return ("sketch", p) if p > 0.5 else ("photo", 1.0 - p)


# BEGIN DEFAULT_PARAMS -- generated by `python benchmarks/domain_detector.py --write`
# (fitted on CUFS train_photos/train_sketches, the even-numbered FS2K pairs and their
# augmentations; never on CUFS test or the odd-numbered FS2K pairs)
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
        0.37459065349492476,
        0.21356202314131384,
        0.6899097024579519,
        0.7461874311708148,
        0.0866620538965683,
        0.04898903504660526,
        0.09189769777397765,
        0.06082101607954857,
        0.16284191047860924,
        0.1428219241092271,
        0.269658810525541,
        0.039829029934098696,
        2.2421934519864357,
        0.12040127527388109,
        0.241274817754558,
        0.7060428406184002,
        0.9508665190616375
    ],
    "std": [
        0.2363308990275347,
        0.1438775714049633,
        0.23827065681552687,
        0.15695203716504785,
        0.12131028536656627,
        0.09131043898368184,
        0.07467082299320343,
        0.05769525341397773,
        0.18997454053926932,
        0.17413763325490905,
        0.2600388069650597,
        0.020984160021281863,
        0.46589594577154075,
        0.05319106335093762,
        0.10451329689612879,
        0.2196326106561305,
        1.2336078419971614
    ],
    "weights": [
        0.8717227872531977,
        0.88819678263876,
        1.385284993485194,
        -0.3368529191494262,
        -1.1195789346087732,
        -0.49814339418283016,
        0.15453069514381898,
        0.619168733047254,
        -1.5229888468871449,
        -1.001072198891003,
        0.30789123437993593,
        0.5049806751074429,
        -1.5379534604394383,
        0.3498336108635417,
        0.2372764622516485,
        0.8765809550593343,
        -1.7016771157869037
    ],
    "bias": -1.3147241880936826,
    "fitted_on": {
        "photos": 554,
        "sketches": 554,
        "photos_used": 554,
        "sketches_used": 554,
        "samples": 8310,
        "augmentations_per_image": 6,
        "l2": 0.001,
        "seed": 0
    },
    "train_accuracy": {
        "photo": 0.9951005673027333,
        "sketch": 0.9986462093862816
    }
}
# END DEFAULT_PARAMS
