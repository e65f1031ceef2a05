"""JSON/PNG API: /api/translate, /api/health, /api/info.

Every error under /api is JSON: ``{"error": message, "code": code, "status": n}``.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from facesketch.face import parse_box
from facesketch.imageio import ImageError
from runtime.align import ALIGN_MODES, frame_face, paste_back

from .pngenc import encode_png
from .engine import ModelHolder, NotReady, QueueFull, Timeout, public_message
from .uploads import UploadError, read_image, sniff

bp = Blueprint("api", __name__, url_prefix="/api")

DIRECTIONS = ("auto", "photo2sketch", "sketch2photo")


def holder() -> ModelHolder:
    return current_app.extensions["facesketch"]


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": message, "code": code, "status": status})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(current_app.config["FACESKETCH"].retry_after_s)}


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["image/png", "application/json"])
    return best == "application/json"


def _same_origin_only() -> None:
    """Refuse cross-site POSTs before any work: a page elsewhere could otherwise make
    visitors' browsers spend this server's CPU (whatever it can read of the answer)."""
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    if site == "cross-site" or (origin and origin != "null" and urlsplit(origin).netloc != request.host):
        raise UploadError(403, "cross_origin",
                          "requests from other sites are refused; use this server's own page or "
                          "a client that sends no Origin header")
    if origin == "null":
        raise UploadError(403, "cross_origin", "requests from an opaque origin are refused")


def _read_upload(cfg) -> Any:
    """The form's 'image' decoded (bounded, in a decode slot), or a 4xx UploadError."""
    upload = request.files.get("image")
    if upload is None:
        raise UploadError(400, "no_file", "no image: send the file in the multipart form field 'image'")
    data = upload.read()
    _, width, height = sniff(data, cfg.formats, cfg.max_pixels, cfg.max_aspect)
    # Big images take one slot of their own: however many arrive, they cost at most
    # one core of decoding and never hold up the small ones (a webcam frame, a photo).
    large = width * height > cfg.large_pixels
    slots = current_app.extensions["facesketch_large_slots" if large else "facesketch_decode_slots"]
    if not slots.acquire(timeout=cfg.decode_wait_s):
        raise QueueFull(f"{1 if large else cfg.decode_workers} upload(s) of this size are "
                        "being decoded already")
    try:
        return read_image(data, cfg.formats, cfg.max_pixels, cfg.max_side, cfg.max_aspect, sniffed=True)
    finally:
        slots.release()


@bp.post("/translate")
def translate() -> Response:
    cfg = current_app.config["FACESKETCH"]
    h = holder()
    if not h.ready:
        raise NotReady(h.error or f"the model is {h.state}; try again shortly")
    batcher = h.batcher
    assert batcher is not None
    _same_origin_only()
    t0 = time.perf_counter()
    batcher.announce()
    submitted = False
    try:
        direction = request.form.get("direction", "auto").strip() or "auto"
        if direction not in DIRECTIONS:
            raise UploadError(400, "bad_direction",
                              f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
        rgb = _read_upload(cfg)
        frame = rgb
        rgb, alignment, face = _frame(rgb, cfg)
        job = batcher.submit(rgb, direction, announced=True)
        submitted = True
    finally:
        if not submitted:
            batcher.withdraw()
    res = job.wait(cfg.request_timeout_s)
    domain, confidence = res.domain, res.confidence
    if confidence is None:
        # An explicit direction skips detection in the Translator; the page still
        # shows what the image looks like, by the same detector "auto" uses.
        domain, confidence = h.translator.detect(rgb)
    image = res.image
    if alignment is not None and _flag("paste"):
        image = paste_back(frame, image, alignment)
    png = encode_png(image, cfg.png_compress_level)
    fields: dict[str, Any] = {
        "direction": res.direction,
        "domain": domain,
        "confidence": round(float(confidence), 4),
        "backend": res.backend,
        "latency_ms": round(float(res.latency_ms), 2),
        "batch_size": job.batch_size,
        "server_ms": round((time.perf_counter() - t0) * 1000.0, 2),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "face": face,
        "face_box": alignment.header() if alignment is not None else None,
    }
    headers = {
        "X-Direction": fields["direction"],
        "X-Detected-Domain": fields["domain"],
        "X-Confidence": f"{fields['confidence']:.4f}",
        "X-Backend": str(fields["backend"]),
        "X-Latency-Ms": f"{fields['latency_ms']:.2f}",
        "X-Batch-Size": str(fields["batch_size"]),
        "X-Server-Ms": f"{fields['server_ms']:.2f}",
        "X-Face": face,
        "Cache-Control": "no-store",
    }
    if alignment is not None:
        headers["X-Face-Box"] = fields["face_box"]
    if _wants_json():
        fields["image_png_base64"] = base64.b64encode(png).decode("ascii")
        resp = jsonify(fields)
    else:
        resp = Response(png, mimetype="image/png")
    resp.headers.update(headers)
    return resp


def _flag(name: str) -> bool:
    return request.form.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _frame(rgb, cfg) -> tuple[Any, Any, str]:
    """(image to translate, alignment or None, what was done) for this request's
    ``align`` field (default: the server's --align); ``face_box`` is the previous
    video frame's X-Face-Box, which steadies the crop."""
    mode = request.form.get("align", cfg.align).strip() or cfg.align
    if mode not in ALIGN_MODES:
        raise UploadError(400, "bad_align", f"unknown align mode {mode!r}; use {' or '.join(ALIGN_MODES)}")
    if mode == "off":
        return rgb, None, "off"
    previous = request.form.get("face_box", "").strip() or None
    if previous is not None:
        try:
            parse_box(previous)
        except ValueError as exc:
            raise UploadError(400, "bad_face_box", f"face_box: {exc}") from exc
    return frame_face(rgb, previous)


@bp.get("/health")
def health() -> Response:
    h = holder()
    if h.ready:
        return jsonify({"status": "ok", "backend": h.translator.backend,
                        "load_seconds": round(h.load_seconds or 0.0, 3)})
    if h.state == "failed":
        return error(503, "model_failed", f"the model failed to load: {h.error}")
    return error(503, "model_loading", f"the model is {h.state}", _retry_after())


@bp.get("/info")
def info() -> Response:
    h = holder()
    cfg = current_app.config["FACESKETCH"]
    out: dict[str, Any] = {
        "state": h.state,
        "error": h.error,
        # the model's folder name only: the page may be public (--share)
        "config": {**cfg.to_dict(), "model": Path(cfg.model).name},
        "server": h.batcher.stats() if h.batcher is not None else None,
        "load_seconds": h.load_seconds,
        "warmup_ms": h.warmup_ms,
    }
    if h.ready:
        out["translator"] = h.translator.info()
        out["backend"] = h.translator.backend
        out["image_size"] = h.translator.image_size
    return jsonify(_scrub(out, cfg.model))


def _scrub(value: Any, model: str) -> Any:
    """Every string of a JSON value without absolute filesystem paths (the page may be
    public: --share); the model's own folder becomes its name."""
    if isinstance(value, dict):
        return {k: _scrub(v, model) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, model) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return public_message(value, model)
    return value


# ------------------------------------------------------------------ errors
@bp.app_errorhandler(UploadError)
def _upload_error(exc: UploadError) -> Response:
    return error(exc.status, exc.code, exc.message)


@bp.app_errorhandler(ImageError)
def _image_error(exc: ImageError) -> Response:
    return error(400, "bad_image", str(exc))


@bp.app_errorhandler(QueueFull)
def _queue_full(exc: QueueFull) -> Response:
    return error(503, "busy", f"{exc}; retry shortly", _retry_after())


@bp.app_errorhandler(NotReady)
def _not_ready(exc: NotReady) -> Response:
    return error(503, "model_not_ready", str(exc), _retry_after())


@bp.app_errorhandler(Timeout)
def _timeout(exc: Timeout) -> Response:
    return error(504, "timeout", str(exc), _retry_after())
