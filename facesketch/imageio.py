"""Image decoding and geometry shared by training and the runtime (numpy + PIL).

Every image, whatever its file format or mode (L, P, RGB, RGBA, CMYK, I;16 ...),
becomes an RGB uint8 array with its EXIF orientation applied. Geometry: an
image is fitted into a square keeping its aspect ratio and padded by edge
replication; ``unfit`` crops the padding away again and restores the size.
"""

from __future__ import annotations

import io
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


class ImageError(ValueError):
    """An input could not be decoded into an image."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, EXIF orientation applied, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = max(float(arr.max()), 1.0)
        return Image.fromarray((arr * (255.0 / hi)).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode(data: bytes | str | os.PathLike | Image.Image | np.ndarray,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode bytes, a path, a PIL image or an array to an HxWx3 uint8 RGB array.

    Raises ImageError with a clear message for empty, truncated, unsupported or
    oversized inputs.
    """
    if isinstance(data, np.ndarray):
        return array_to_rgb(data)
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
            img = Image.open(src)  # type: ignore[arg-type]
        except UnidentifiedImageError as exc:
            raise ImageError(f"{label}: not an image in a format we can read "
                             f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)})") from exc
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"{label}: {w}x{h} is {w * h:,} pixels, over the limit of "
                             f"{max_pixels:,}")
        if w == 0 or h == 0:
            raise ImageError(f"{label}: image has no pixels")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        except (OSError, SyntaxError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as exc:
            raise ImageError(f"{label}: truncated or corrupt image ({exc})") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,}")
    return np.asarray(to_rgb(img), dtype=np.uint8).copy()


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


def unfit(square: np.ndarray, fit: Fit) -> np.ndarray:
    """Crop the padding added by ``fit_square`` and resize back to the source size."""
    inner = square[fit.top:fit.top + fit.inner_h, fit.left:fit.left + fit.inner_w]
    if inner.shape[:2] == (fit.src_h, fit.src_w):
        return np.ascontiguousarray(inner)
    return np.asarray(Image.fromarray(inner).resize((fit.src_w, fit.src_h), Image.BICUBIC))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name); hidden files ignored."""
    p = Path(folder)
    return sorted(f for f in p.iterdir()
                  if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))


def load_folder(folder: str | os.PathLike, size: int, limit: int | None = None,
                warn=None) -> tuple[np.ndarray, list[str], list[str]]:
    """Decode every image of ``folder`` fitted into ``size``x``size``.

    Returns (uint8 array N x size x size x 3, names loaded, names skipped). A file
    that cannot be decoded is skipped with a warning naming it.
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
