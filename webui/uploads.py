"""Upload checking: bytes -> RGB array, or an UploadError with a status and code.

Everything happens in memory. The checks run cheapest first: empty, format
sniffed from the header (never the client's file name or content type), the
declared pixel count (so a decompression bomb is refused before any pixel is
decoded), then the full decode (truncated or corrupt data).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesketch.imageio import DEFAULT_MAX_ASPECT, ImageError, decode


class UploadError(ValueError):
    """A client error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def sniff(data: bytes, formats: tuple[str, ...], max_pixels: int,
          max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[str, int, int]:
    """Identify the format and size from the header alone; raise UploadError if refused."""
    if not data:
        raise UploadError(400, "empty_file", "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            # We apply our own, lower, pixel limit below; PIL's warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = (img.format or "unknown"), img.size
    except UnidentifiedImageError:
        raise UploadError(415, "not_an_image",
                          "the upload is not an image in a format we read "
                          f"({', '.join(formats)})") from None
    except Image.DecompressionBombError as exc:
        raise UploadError(413, "image_too_large",
                          f"the image is too large to decode ({exc}); the limit is "
                          f"{max_pixels:,} pixels") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes
        # PIL recognised a header but could not even read it.
        raise UploadError(400, "corrupt_image", f"the image header is corrupt ({exc})") from None
    if fmt not in formats:
        raise UploadError(415, "unsupported_format",
                          f"{fmt} images are not supported; send one of {', '.join(formats)}")
    if w * h > max_pixels:
        raise UploadError(413, "image_too_large",
                          f"the image is {w}x{h} = {w * h:,} pixels, over the limit of "
                          f"{max_pixels:,}")
    if min(w, h) == 0 or max(w, h) / min(w, h) > max_aspect:
        raise UploadError(400, "bad_shape",
                          f"the image is {w}x{h}, a strip no face picture is; the long side may "
                          f"be at most {max_aspect:g} times the short one")
    return fmt, w, h


def read_image(data: bytes, formats: tuple[str, ...], max_pixels: int,
               max_side: int | None = None, max_aspect: float = DEFAULT_MAX_ASPECT,
               sniffed: bool = False) -> np.ndarray:
    """Upload bytes -> HxWx3 uint8 RGB (no larger than ``max_side``), or UploadError
    (400/413/415). Any decoder failure on the bytes is a 400, never a server error.
    ``sniffed``: the caller has already checked the header with ``sniff``."""
    if not sniffed:
        sniff(data, formats, max_pixels, max_aspect)
    try:
        return decode(data, max_pixels=max_pixels, max_side=max_side, max_aspect=max_aspect)
    except ImageError as exc:
        raise UploadError(400, "corrupt_image", _public(str(exc))) from None


def _public(message: str) -> str:
    """A decoder message as a client may see it (no server paths: uploads have none)."""
    return message.replace("upload: ", "", 1)
