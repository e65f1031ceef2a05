"""Image decoding and geometry shared by training and the runtime (numpy + PIL).

Every image, whatever its file format or mode (L, P, RGB, RGBA, CMYK, I;16 ...),
becomes an RGB uint8 array with its EXIF orientation applied. Geometry: an
image is fitted into a square keeping its aspect ratio and padded by edge
replication; ``unfit`` crops the padding away again and restores the size.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Decompression-bomb guard: PIL warns above MAX_IMAGE_PIXELS and raises at 2x.
# We raise above our own limit so no caller ever decodes a bomb.
DEFAULT_MAX_PIXELS = 40_000_000
# Long side over short side: a face picture is never a 1:20 strip; a thin strip of
# millions of pixels only costs work (every stage scales with the long side).
DEFAULT_MAX_ASPECT = 20.0

log = logging.getLogger("facesketch.imageio")


class ImageError(ValueError):
    """An input could not be decoded into an image."""


def _exif_transpose(img: Image.Image, label: str) -> Image.Image:
    """EXIF orientation applied; a damaged EXIF block is ignored (the pixels are fine)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - any parser error in untrusted metadata
        log.warning("%s: ignoring its damaged EXIF orientation (%s: %s)", label,
                    type(exc).__name__, exc)
        return img


def _reduce(img: Image.Image, max_side: int | None) -> Image.Image:
    """Shrink so the long side is at most ``max_side`` (box filter, integer steps first)."""
    if not max_side or max(img.size) <= max_side:
        return img
    w, h = img.size
    k = max(img.size) // max_side
    if k >= 2 and img.mode in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK"):
        img = img.reduce(k)
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))),
                         Image.BOX)
    return img


def _wide_to_u8(img: Image.Image, max_side: int | None) -> Image.Image:
    """16/32-bit integer and float images -> L, stretched to 0..255, without float64 copies
    (and subsampled first when ``max_side`` asks for a smaller image)."""
    arr = np.asarray(img)
    if max_side and max(arr.shape[:2]) > max_side:
        k = math.ceil(max(arr.shape[:2]) / max_side)
        arr = arr[::k, ::k]
    lo = float(arr.min()) if img.mode == "F" else min(0.0, float(arr.min()))
    hi = float(arr.max())
    scale = np.float32(255.0 / max(hi - lo, 1e-12 if img.mode == "F" else 1.0))
    out = np.empty(arr.shape, np.uint8)
    np.multiply(np.subtract(arr, lo, dtype=np.float32), scale, out=out, casting="unsafe")
    return Image.fromarray(out, "L")


def to_rgb(img: Image.Image, max_side: int | None = None, label: str = "image") -> Image.Image:
    """Any PIL image -> RGB, EXIF orientation applied, alpha composited on white;
    with ``max_side``, no larger than that on its long side."""
    img = _exif_transpose(img, label)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _reduce(_wide_to_u8(img, max_side), max_side).convert("RGB")
    img = _reduce(img, max_side)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def check_geometry(w: int, h: int, label: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
    """Refuse (ImageError) sizes no face picture has: empty, too many pixels, a thin strip."""
    if w <= 0 or h <= 0:
        raise ImageError(f"{label}: image has no pixels")
    if w * h > max_pixels:
        raise ImageError(f"{label}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,}")
    if max(w, h) / min(w, h) > max_aspect:
        raise ImageError(f"{label}: {w}x{h} is a strip (aspect ratio {max(w, h) / min(w, h):.0f}:1, "
                         f"the limit is {max_aspect:.0f}:1)")


def decode(data: bytes | str | os.PathLike | Image.Image | np.ndarray,
           max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None,
           max_aspect: float = DEFAULT_MAX_ASPECT) -> np.ndarray:
    """Decode bytes, a path, a PIL image or an array to an HxWx3 uint8 RGB array.

    Raises ImageError with a clear message for empty, truncated, corrupt,
    unsupported, oversized or strip-shaped inputs; any failure of a decoder on
    untrusted bytes becomes an ImageError. ``max_side``: decode no larger than
    that on the long side (JPEGs are decoded at a reduced scale directly, so a
    big photo costs a fraction of a full decode). A damaged EXIF block is ignored.
    """
    if isinstance(data, np.ndarray):
        return array_to_rgb(data)
    label = "image"
    if isinstance(data, Image.Image):
        img = data
    else:
        if isinstance(data, (bytes, bytearray)):
            if len(data) == 0:
                raise ImageError("the file is empty")
            src: object = io.BytesIO(data)
            label = "upload"
        else:
            src = os.fspath(data)
            label = str(src)
            if os.path.getsize(src) == 0:
                raise ImageError(f"{label}: the file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(src)  # type: ignore[arg-type]
        except UnidentifiedImageError as exc:
            raise ImageError(f"{label}: not an image in a format we can read "
                             f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)})") from exc
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: too many pixels to decode ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - a header PIL recognised but cannot parse
            raise ImageError(f"{label}: corrupt image header ({type(exc).__name__}: {exc})") from exc
        w, h = img.size
        check_geometry(w, h, label, max_pixels, max_aspect)
        if max_side and img.format == "JPEG" and max(w, h) > max_side:
            s = max_side / max(w, h)
            img.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))  # DCT scaling: 1/2 .. 1/8
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad bytes
            raise ImageError(f"{label}: truncated or corrupt image ({type(exc).__name__}: {exc})") from exc
    w, h = img.size
    check_geometry(w, h, label, max_pixels, max_aspect)
    try:
        rgb = to_rgb(img, max_side, label)
        return np.asarray(rgb, dtype=np.uint8).copy()
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion of a damaged image
        raise ImageError(f"{label}: the image could not be converted to RGB "
                         f"({type(exc).__name__}: {exc})") from exc


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array (uint8 or float in [0,1]) -> HxWx3 uint8."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = (a[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


@dataclass(frozen=True)
class Fit:
    """How an image was placed into a square canvas (to undo it afterwards)."""

    src_h: int
    src_w: int
    size: int
    top: int
    left: int
    inner_h: int
    inner_w: int


def fit_square(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Fit]:
    """Resize keeping the aspect ratio so the long side is ``size``; pad by edge."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    ih, iw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((iw, ih), Image.BICUBIC))
    top, left = (size - ih) // 2, (size - iw) // 2
    out = np.pad(resized, ((top, size - ih - top), (left, size - iw - left), (0, 0)), mode="edge")
    return out, Fit(h, w, size, top, left, ih, iw)


def inner(square: np.ndarray, fit: Fit) -> np.ndarray:
    """The part of a ``fit_square`` canvas that holds the image (padding cropped)."""
    return square[fit.top:fit.top + fit.inner_h, fit.left:fit.left + fit.inner_w]


def unfit(square: np.ndarray, fit: Fit) -> np.ndarray:
    """Crop the padding added by ``fit_square`` and resize back to the source size."""
    crop = inner(square, fit)
    if crop.shape[:2] == (fit.src_h, fit.src_w):
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((fit.src_w, fit.src_h), Image.BICUBIC))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name); hidden files ignored."""
    p = Path(folder)
    return sorted(f for f in p.iterdir()
                  if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))


def load_folder(folder: str | os.PathLike, size: int, limit: int | None = None,
                warn=None, prepare=None) -> tuple[np.ndarray, list[str], list[str]]:
    """Decode every image of ``folder`` fitted into ``size``x``size``.

    Returns (uint8 array N x size x size x 3, names loaded, names skipped). A file
    that cannot be decoded is skipped with a warning naming it. ``prepare``: a
    function applied to each decoded RGB array before fitting (e.g. face alignment).
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=2))
    files = list_images(folder)
    arrays, names, skipped = [], [], []
    for f in files:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            rgb = decode(f)
        except (ImageError, OSError) as exc:
            warn(f"skipping {f}: {exc}")
            skipped.append(f.name)
            continue
        if prepare is not None:
            rgb = prepare(rgb)
        arrays.append(fit_square(rgb, size)[0])
        names.append(f.name)
    stack = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return stack, names, skipped


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    Image.fromarray(rgb).save(path, format="PNG")


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ model input/output
def _norm_arrays(normalization: dict) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(normalization.get("mean", [0.5] * 3), np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(normalization.get("std", [0.5] * 3), np.float32).reshape(1, 3, 1, 1)
    return mean, std


def normalize(squares: np.ndarray, normalization: dict) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W the generator takes: (x/255 - mean) / std
    with a checkpoint's or bundle's ``normalization`` (mean = std = 0.5: [-1, 1])."""
    mean, std = _norm_arrays(normalization)
    x = np.asarray(squares).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - mean) / std)


def denormalize(y: np.ndarray, normalization: dict) -> np.ndarray:
    """The generator's float32 N x 3 x H x W output -> uint8 N x H x W x 3 (NaN -> 0)."""
    mean, std = _norm_arrays(normalization)
    u = (np.nan_to_num(y) * std + mean) * 255.0 + 0.5
    return np.clip(u, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def to_gray_rgb(rgb: np.ndarray) -> np.ndarray:
    """... x H x W x 3 uint8 -> the same with R = G = B = its BT.601 luma (a model's
    "gray" post-processing: pencil sketches have no colour, whatever the generator adds)."""
    y = np.asarray(rgb, np.float32) @ np.float32([0.299, 0.587, 0.114]) + np.float32(0.5)
    return np.repeat(np.clip(y, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
