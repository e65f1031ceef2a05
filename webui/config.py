"""WebConfig: everything the web application needs, as one typed dataclass.

Build it from keyword arguments or with ``WebConfig.from_dict`` (unknown keys
raise ConfigError naming the valid ones); ``create_app`` validates it before
any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facesketch.config import ConfigError, check, choices, from_dict, to_dict

MiB = 1 << 20


@dataclass
class WebConfig:
    # The model: a bundle folder (manifest.json) or a checkpoint (needs torch).
    model: str = ""
    backend: str = "auto"               # passed to runtime.Translator.load
    server: str = ""                    # Triton server HOST:PORT, with backend "triton"
    device: str = "auto"
    # Uploads: bytes of the whole request, and decoded pixels (decompression bombs).
    max_upload_bytes: int = 10 * MiB
    max_pixels: int = 24_000_000        # 6000x4000; a 24 MP photo decodes to 72 MB of RGB
    # PIL format names accepted; anything else PIL can read is answered 415.
    formats: tuple = ("JPEG", "PNG", "WEBP", "BMP")
    # Micro-batching: up to batch_max_size images per engine call; the first
    # image of a batch waits at most batch_max_wait_ms for company. "adaptive"
    # waits only while other requests are known to be on their way (already
    # inside the API, still decoding); "fixed" always waits the full time.
    batch_max_size: int = 8
    batch_max_wait_ms: float = 4.0
    batch_wait_policy: str = choices("adaptive", "fixed", default="adaptive")
    # Bounded queue of decoded images waiting for the engine; full -> 503.
    queue_size: int = 32
    retry_after_s: int = 1
    request_timeout_s: float = 60.0     # a request waiting longer answers 504
    warmup: bool = True                 # run both directions once before /api/health says 200
    png_compress_level: int = 1         # 0-9: result PNG size vs encode time (deflate level)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WebConfig":
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        check(self)
        positive = ("max_upload_bytes", "max_pixels", "batch_max_size", "queue_size",
                    "request_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.batch_max_wait_ms < 0:
            raise ConfigError(f"batch_max_wait_ms must be >= 0, got {self.batch_max_wait_ms!r}")
        if self.retry_after_s < 1:
            raise ConfigError(f"retry_after_s must be >= 1, got {self.retry_after_s!r}")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(f"png_compress_level must be 0..9, got {self.png_compress_level!r}")
        if not self.formats:
            raise ConfigError("formats must name at least one image format")
        self.formats = tuple(str(f).upper() for f in self.formats)
