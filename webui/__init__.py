"""facesketch web UI: a Flask app (page + API) around one runtime.Translator.

``create_app(config)`` builds the app; the Translator is loaded ONCE per
process, in a background thread started by ``create_app`` (or later by
``app.extensions["facesketch"].start()`` when ``start_loading=False``, e.g.
after a pre-fork server has forked). Until it is loaded and warm,
``/api/health`` answers 503 and ``/api/translate`` 503 with Retry-After.

Imports no torch: a bundle is served torch-free (a checkpoint path needs torch,
imported by the runtime only then).
"""

from __future__ import annotations

import io
import threading
from typing import Any

from flask import Flask, Request, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from facesketch.config import ConfigError

from .config import WebConfig
from .engine import ModelHolder

__all__ = ["WebConfig", "create_app", "ConfigError"]

# Content-Security-Policy: everything from this origin; images may be blob:/data:
# (results, camera frames). Enforces the "works offline, no CDN" rule in the browser.
CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
       "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class InMemoryRequest(Request):
    """Multipart file parts stay in memory (never spooled to a temporary file).

    The request body is bounded by MAX_CONTENT_LENGTH, so memory is bounded too.
    """

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


def create_app(config: WebConfig | dict[str, Any], start_loading: bool = True) -> Flask:
    cfg = WebConfig.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    if not cfg.model:
        raise ConfigError("WebConfig.model is required: a bundle folder or a checkpoint")

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(
        FACESKETCH=cfg,
        MAX_CONTENT_LENGTH=cfg.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=512 * 1024,  # a non-file field (direction: a few bytes); also
        # bounds what werkzeug buffers while parsing, so not much lower
    )
    app.extensions["facesketch_decode_slots"] = threading.BoundedSemaphore(cfg.decode_workers)
    app.extensions["facesketch_large_slots"] = threading.BoundedSemaphore(1)
    app.json.sort_keys = False

    from . import api, pages
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/") or request.path == "/api":
            code = {413: "upload_too_large", 405: "method_not_allowed",
                    404: "not_found"}.get(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
            msg = exc.description or exc.name
            if exc.code == 405:
                allowed = [m for m in (getattr(exc, "valid_methods", None) or []) if m != "OPTIONS"]
                msg = f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}"
            if exc.code == 413:
                size = request.content_length
                if size is not None and size <= cfg.max_upload_bytes:
                    # the body fits: a non-file form field is over werkzeug's field limit
                    msg = (f"a form field is larger than the limit of "
                           f"{app.config['MAX_FORM_MEMORY_SIZE']:,} bytes; send the image as a "
                           "file part named 'image'")
                    code = "field_too_large"
                else:
                    msg = (f"the upload is larger than the limit of {cfg.max_upload_bytes:,} "
                           f"bytes ({cfg.max_upload_bytes / (1 << 20):.1f} MiB)")
            resp = jsonify({"error": msg, "code": code, "status": exc.code})
            resp.status_code = exc.code or 500
            if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
                resp.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
            return resp
        return exc

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            # the details stay in the server log: they may name files and paths
            resp = jsonify({"error": f"internal error ({type(exc).__name__}); the server log "
                            "has the details", "code": "internal_error", "status": 500})
            resp.status_code = 500
            return resp
        return Response("internal error", status=500, mimetype="text/plain")

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", CSP)
        return resp

    holder = ModelHolder(cfg)
    app.extensions["facesketch"] = holder
    if start_loading:
        holder.start()
    return app
