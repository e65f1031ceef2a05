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
    # A bundle file failing its sha256 stops the load, unless this is set: then the
    # intact engines are served (runtime.Translator.load(allow_partial=True)).
    allow_partial: bool = False
    # Uploads: bytes of the whole request, and decoded pixels (decompression bombs).
    max_upload_bytes: int = 10 * MiB
    # 16 MP (4900x3265) is more than any face needs; the limit is checked on the header.
    max_pixels: int = 16_000_000
    max_aspect: float = 20.0            # long side / short side; thin strips are refused
    # Images are decoded no larger than this on their long side (JPEG at a reduced DCT
    # scale): the model sees at most a few hundred pixels, and results come back at
    # the decoded size, so work and memory per request are bounded.
    max_side: int = 2048
    # Uploads decoded at once (each may hold up to max_side^2 x 3 bytes plus the
    # decoder's buffers); more wait, up to decode_wait_s, then get a 503.
    decode_workers: int = 2
    decode_wait_s: float = 10.0
    # Images over this many pixels (by their header) are decoded one at a time, apart
    # from the others: a client looping on big images costs at most one core.
    large_pixels: int = 4_000_000
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
    # Face alignment (runtime.align): "auto" crops the largest face in the training data's
    # framing before translating (the default answer of /api/translate; the form field
    # "align" overrides it per request); "off" translates whole images.
    align: str = choices("auto", "off", default="auto")
    # Per client address (webui.server.ClientMeter): sums that decay over client_window_s
    # of its requests refused (4xx: bad, oversized, cross-site uploads), of all its
    # requests, and of the CPU seconds its requests took in their worker thread beyond
    # client_cpu_free_ms each. A client over any limit has its next requests held
    # client_hold_s in the server loop, then answered 429 with Retry-After, without
    # reaching the app, until its sums decay. 0 turns a limit off. Behind one NAT, or
    # a proxy that is not trusted (see client_forwarded_for), all clients share one
    # address and so these limits.
    client_refusal_limit: int = 10      # refusals in about client_window_s (1/s sustained)
    client_request_limit: int = 600     # requests in about client_window_s (60/s sustained)
    client_cpu_share: float = 0.1       # of one core, averaged over about client_window_s
    # A typical upload costs its worker 5-10 ms (a 200x250 photo 7, a 512x384 webcam
    # frame 10); only what a request takes beyond this is charged to client_cpu_share.
    client_cpu_free_ms: float = 25.0
    client_window_s: float = 10.0
    client_hold_s: float = 1.0
    # Key clients by the last X-Forwarded-For entry on connections from loopback (a
    # local proxy: the ngrok agent of --share, which sets this), else by peer address.
    client_forwarded_for: bool = False

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
                    "request_timeout_s", "max_side", "decode_workers", "decode_wait_s",
                    "large_pixels")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_aspect < 1:
            raise ConfigError(f"max_aspect must be >= 1, got {self.max_aspect!r}")
        if self.batch_max_wait_ms < 0:
            raise ConfigError(f"batch_max_wait_ms must be >= 0, got {self.batch_max_wait_ms!r}")
        if self.retry_after_s < 1:
            raise ConfigError(f"retry_after_s must be >= 1, got {self.retry_after_s!r}")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(f"png_compress_level must be 0..9, got {self.png_compress_level!r}")
        for name in ("client_refusal_limit", "client_request_limit", "client_cpu_share",
                     "client_cpu_free_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)!r}")
        if not self.client_window_s > 0:
            raise ConfigError(f"client_window_s must be > 0, got {self.client_window_s!r}")
        if not 0 <= self.client_hold_s <= 30:
            raise ConfigError(f"client_hold_s must be 0..30, got {self.client_hold_s!r}")
        if not self.formats:
            raise ConfigError("formats must name at least one image format")
        self.formats = tuple(str(f).upper() for f in self.formats)
