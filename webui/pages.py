"""The page: one HTML template plus local JS/CSS (no CDN, no web fonts)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    cfg = current_app.config["FACESKETCH"]
    return render_template("index.html", max_upload_bytes=cfg.max_upload_bytes, align=cfg.align,
                           max_pixels=cfg.max_pixels, formats=cfg.formats)
