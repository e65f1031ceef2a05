"""A fast PNG encoder for RGB results (numpy + zlib).

PIL tries every PNG row filter on every row and then deflates; for a 200x250
result that is ~10 ms of a request's ~20 ms of web overhead on this CPU. Here
every row uses the "Up" filter (a vectorised difference with the row above,
which suits smooth faces about as well as PIL's adaptive choice) and zlib's
fast level: about 2.5x faster at the same size. The output is a standard,
lossless 8-bit RGB PNG.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(rgb: np.ndarray, level: int = 1) -> bytes:
    """HxWx3 uint8 -> PNG bytes (deflate ``level`` 0-9)."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected a non-empty HxWx3 uint8 array, got {a.dtype} {a.shape}")
    h, w, _ = a.shape
    rows = np.ascontiguousarray(a).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = FILTER_UP
    raw[0, 1:] = rows[0]                       # the row above the first one is zeros
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])   # uint8 arithmetic wraps mod 256
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))
