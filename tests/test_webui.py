"""Web UI: every route and every bad input through Flask's test client, the
micro-batcher, queue-full 503, health before/after loading, and `facesketch
serve` under waitress (local URL, --share failing cleanly, server keeps going).

The model is the REAL runtime.Translator loaded from the tiny random
checkpoint: its translations are noise, but every byte goes through the same
code as in production.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesketch.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("flask")
pytest.importorskip("waitress")


# ----------------------------------------------------------------- helpers
def png(w: int = 40, h: int = 50, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries (almost) no data: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def post(client, data: bytes | None, direction: str | None = None, name: str = "face.png",
         accept: str | None = None):
    form = {}
    if data is not None:
        form["image"] = (io.BytesIO(data), name)
    if direction is not None:
        form["direction"] = direction
    headers = {"Accept": accept} if accept else {}
    return client.post("/api/translate", data=form, content_type="multipart/form-data",
                       headers=headers)


def make_app(model, start_loading=True, **overrides):
    from webui import WebConfig, create_app
    cfg = WebConfig(model=str(model), **overrides)
    return create_app(cfg, start_loading=start_loading)


def ready_app(model, **overrides):
    app = make_app(model, **overrides)
    holder = app.extensions["facesketch"]
    assert holder.wait(180), f"model did not load: {holder.state} {holder.error}"
    return app


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def app(tiny_checkpoint):
    app = ready_app(tiny_checkpoint)
    yield app
    app.extensions["facesketch"].close()


@pytest.fixture
def client(app):
    return app.test_client()


# ----------------------------------------------------------------- config
def test_config_rejects_unknown_keys_and_bad_values(tiny_checkpoint):
    from webui import WebConfig, create_app
    with pytest.raises(ConfigError, match="valid keys: .*batch_max_size"):
        WebConfig.from_dict({"model": "x", "batch_size": 4})
    with pytest.raises(ConfigError, match="queue_size must be > 0"):
        WebConfig.from_dict({"model": "x", "queue_size": 0})
    with pytest.raises(ConfigError, match="batch_wait_policy must be one of"):
        WebConfig.from_dict({"model": "x", "batch_wait_policy": "sometimes"})
    with pytest.raises(ConfigError, match="max_upload_bytes must be an integer"):
        WebConfig.from_dict({"model": "x", "max_upload_bytes": "10MB"})
    with pytest.raises(ConfigError, match="model is required"):
        create_app({})
    cfg = WebConfig.from_dict({"model": str(tiny_checkpoint), "formats": ["png", "jpeg"]})
    assert cfg.formats == ("PNG", "JPEG")
    assert WebConfig().max_upload_bytes == 10 * 1024 * 1024


# ----------------------------------------------------------------- png encoder
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (250, 200), (31, 17)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_fast_png_is_lossless_standard_png(shape, level):
    from webui.pngenc import encode_png
    rng = np.random.default_rng(sum(shape) + level)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = encode_png(rgb, level)
    img = Image.open(io.BytesIO(data))
    img.load()                                        # PIL checks every chunk's CRC
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(img), rgb)


def test_fast_png_rejects_wrong_arrays():
    from webui.pngenc import encode_png
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            encode_png(bad)


# ----------------------------------------------------------------- routes
def test_translate_png_with_headers(client):
    data = png(40, 50)
    r = post(client, data)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "image/png"
    out = Image.open(io.BytesIO(r.data))
    assert out.format == "PNG" and out.size == (40, 50)          # back at the input's size
    assert r.headers["X-Direction"] in ("photo2sketch", "sketch2photo")
    assert r.headers["X-Detected-Domain"] in ("photo", "sketch")
    assert 0.5 <= float(r.headers["X-Confidence"]) <= 1.0
    assert r.headers["X-Backend"] == client.application.extensions["facesketch"].translator.backend
    assert float(r.headers["X-Latency-Ms"]) > 0
    # auto picks the direction from the detected domain
    src = {"photo2sketch": "photo", "sketch2photo": "sketch"}[r.headers["X-Direction"]]
    assert src == r.headers["X-Detected-Domain"]


def test_translate_json_same_fields_and_base64_png(client):
    data = png(33, 21, seed=3)
    r = post(client, data, direction="sketch2photo", accept="application/json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    body = r.get_json()
    for key in ("direction", "domain", "confidence", "backend", "latency_ms"):
        assert key in body
    assert body["direction"] == "sketch2photo" == r.headers["X-Direction"]
    assert body["domain"] == r.headers["X-Detected-Domain"]
    img = Image.open(io.BytesIO(base64.b64decode(body["image_png_base64"])))
    assert img.format == "PNG" and img.size == (33, 21)
    assert (body["width"], body["height"]) == (33, 21)


def test_result_matches_translator_directly(client):
    """The API returns exactly what the Translator computes for the same pixels."""
    data = png(48, 48, seed=7)
    holder = client.application.extensions["facesketch"]
    direct = holder.translator.translate(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
                                         direction="photo2sketch")
    r = post(client, data, direction="photo2sketch")
    assert r.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
    assert got.shape == direct.image.shape
    assert np.abs(got.astype(int) - direct.image.astype(int)).max() <= 1


@pytest.mark.parametrize("direction", ["photo2sketch", "sketch2photo"])
def test_direction_override(client, direction):
    r = post(client, png(), direction=direction)
    assert r.status_code == 200
    assert r.headers["X-Direction"] == direction


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                      ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA")])
def test_accepts_formats_and_modes(client, fmt, mode):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 26, 3), np.uint8)).convert(mode)
    r = post(client, encode(img, fmt), name=f"x.{fmt.lower()}")
    assert r.status_code == 200, r.get_json()
    assert Image.open(io.BytesIO(r.data)).size == (26, 30)


def test_health_ok(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.get_json()["status"] == "ok"


def test_info_reports_model_backend_and_batcher(client):
    post(client, png())
    r = client.get("/api/info")
    assert r.status_code == 200
    body = r.get_json()
    assert body["state"] == "ready"
    assert body["backend"] == client.application.extensions["facesketch"].translator.backend
    assert isinstance(body["translator"], dict) and body["translator"]
    assert body["server"]["images"] >= 1 and body["server"]["batches"] >= 1
    assert body["config"]["max_upload_bytes"] == 10 * 1024 * 1024
    assert body["image_size"] == 32


def test_page_has_stable_ids_and_no_external_resources(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    for id_ in ("file-input", "result-img", "input-img", "domain", "confidence", "backend",
                "latency", "direction", "download", "error", "camera-btn", "drop-zone", "video"):
        assert f'id="{id_}"' in html, id_
    assert 'name="viewport"' in html
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    for path in ("/static/app.js", "/static/app.css"):
        s = client.get(path)
        assert s.status_code == 200
        assert s.data
    # nothing is fetched from another origin: no absolute URLs in page, script or style
    static = REPO / "webui" / "static"
    texts = [html] + [p.read_text() for p in static.iterdir() if p.suffix in (".js", ".css")]
    for text in texts:
        assert "http://" not in text and "https://" not in text.replace("https or localhost", "")
        assert "//fonts." not in text and "cdn" not in text.lower()


def test_model_loaded_once_per_process(client):
    holder = client.application.extensions["facesketch"]
    t = holder.translator
    for _ in range(3):
        assert post(client, png()).status_code == 200
    assert holder.translator is t


# ----------------------------------------------------------------- bad input
BAD_INPUTS = {
    "no_file": (None, 400, "no_file"),
    "empty_file": (b"", 400, "empty_file"),
    "not_an_image": (b"%PDF-1.4 definitely not an image\n" * 20, 415, "not_an_image"),
    "truncated": (png(64, 64)[:300], 400, "corrupt_image"),
    "unsupported_gif": (encode(Image.new("RGB", (16, 16), (9, 9, 9)), "GIF"), 415,
                        "unsupported_format"),
    "unsupported_tiff": (encode(Image.new("RGB", (16, 16), (9, 9, 9)), "TIFF"), 415,
                         "unsupported_format"),
    "over_pixel_limit": (png_header_only(6000, 4001), 413, "image_too_large"),
    "decompression_bomb": (png_header_only(100_000, 100_000), 413, "image_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_json_4xx_and_server_keeps_serving(client, case):
    data, status, code = BAD_INPUTS[case]
    r = post(client, data)
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert body["code"] == code and body["status"] == status and body["error"]
    ok = post(client, png())
    assert ok.status_code == 200


def test_unknown_direction(client):
    r = post(client, png(), direction="photo2cartoon")
    assert r.status_code == 400
    body = r.get_json()
    assert body["code"] == "bad_direction" and "photo2cartoon" in body["error"]


def test_upload_over_size_limit_is_413_json(client):
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(10 * 1024 * 1024)
    r = post(client, big)
    assert r.status_code == 413
    body = r.get_json()
    assert body["code"] == "upload_too_large" and "10.0 MiB" in body["error"]
    assert post(client, png()).status_code == 200


@pytest.mark.parametrize("method,path", [("get", "/api/translate"), ("put", "/api/translate"),
                                         ("post", "/api/health"), ("delete", "/api/info")])
def test_wrong_method_is_405_json(client, method, path):
    r = getattr(client, method)(path)
    assert r.status_code == 405
    body = r.get_json()
    assert body["code"] == "method_not_allowed"
    assert method.upper() in body["error"]
    assert "Allow" in r.headers


def test_unknown_api_route_is_404_json(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"


def test_uploads_never_touch_disk(client, monkeypatch):
    """Multipart parts stay in memory: no temporary file (spooled or not) is made."""
    import tempfile

    import werkzeug.formparser as formparser
    created = []

    def recorder(name, orig):
        def make(*a, **k):
            created.append(name)
            return orig(*a, **k)
        return make

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, recorder(name, getattr(tempfile, name)))
    if getattr(formparser, "SpooledTemporaryFile", None) is not None:
        monkeypatch.setattr(formparser, "SpooledTemporaryFile",
                            recorder("werkzeug-spooled", formparser.SpooledTemporaryFile))
    data = png(480, 480, seed=5)
    assert len(data) > 500 * 1024            # over werkzeug's 500 KiB in-memory default
    r = post(client, data)
    assert r.status_code == 200
    assert created == []


# ----------------------------------------------------------------- loading
def test_health_503_before_loaded_then_200(tiny_checkpoint):
    app = make_app(tiny_checkpoint, start_loading=False)
    c = app.test_client()
    r = c.get("/api/health")
    assert r.status_code == 503
    assert r.get_json()["code"] == "model_loading" and r.headers["Retry-After"] == "1"
    r = post(c, png())
    assert r.status_code == 503 and r.get_json()["code"] == "model_not_ready"
    assert "Retry-After" in r.headers
    assert c.get("/api/info").get_json()["state"] == "idle"
    assert c.get("/").status_code == 200          # the page is served while loading
    holder = app.extensions["facesketch"]
    holder.start()
    assert holder.wait(180)
    assert c.get("/api/health").status_code == 200
    assert post(c, png()).status_code == 200
    holder.close()


def test_model_that_fails_to_load_is_reported(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    app = make_app(tmp_path / "not-a-model")
    holder = app.extensions["facesketch"]
    assert holder.wait(60) is False
    r = app.test_client().get("/api/health")
    assert r.status_code == 503
    body = r.get_json()
    assert body["code"] == "model_failed" and body["error"]
    r = post(app.test_client(), png())
    assert r.status_code == 503


# ----------------------------------------------------------------- batching
def _concurrent_posts(app, n: int, direction_of=lambda i: "auto") -> list:
    barrier = threading.Barrier(n)
    results = [None] * n

    def worker(i):
        c = app.test_client()
        data = png(36, 44, seed=100 + i)
        barrier.wait()
        results[i] = post(c, data, direction=direction_of(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_requests_are_batched(tiny_checkpoint):
    app = ready_app(tiny_checkpoint, batch_max_size=4, batch_max_wait_ms=5000.0,
                    batch_wait_policy="fixed")
    try:
        results = _concurrent_posts(app, 4)
        assert all(r is not None and r.status_code == 200 for r in results)
        stats = app.test_client().get("/api/info").get_json()["server"]
        assert stats["max_batch"] > 1, stats
        assert stats["images"] == 4
        assert max(int(r.headers["X-Batch-Size"]) for r in results) > 1
        # each client gets its own image back (sizes identical, contents differ)
        datas = {r.data for r in results}
        assert len(datas) == 4
    finally:
        app.extensions["facesketch"].close()


def test_batch_with_mixed_directions_goes_to_the_right_generator(tiny_checkpoint):
    app = ready_app(tiny_checkpoint, batch_max_size=4, batch_max_wait_ms=5000.0,
                    batch_wait_policy="fixed")
    try:
        dirs = ["photo2sketch", "sketch2photo", "photo2sketch", "sketch2photo"]
        results = _concurrent_posts(app, 4, direction_of=lambda i: dirs[i])
        assert [r.headers["X-Direction"] for r in results] == dirs
        holder = app.extensions["facesketch"]
        for i, r in enumerate(results):
            rgb = np.asarray(Image.open(io.BytesIO(png(36, 44, seed=100 + i))).convert("RGB"))
            want = holder.translator.translate(rgb, direction=dirs[i]).image
            got = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    finally:
        app.extensions["facesketch"].close()


def test_adaptive_policy_does_not_hold_a_lone_request(tiny_checkpoint):
    """Adaptive waiting: with nobody else on the way, a request is not held for
    max_wait (60 s here), so it answers long before its 20 s timeout."""
    app = ready_app(tiny_checkpoint, batch_max_wait_ms=60_000.0, batch_wait_policy="adaptive",
                    request_timeout_s=20.0)
    try:
        r = post(app.test_client(), png())
        assert r.status_code == 200
    finally:
        app.extensions["facesketch"].close()


def test_request_timeout_is_504_json(tiny_checkpoint):
    """A "fixed" batcher waiting 30 s for company outlasts a 0.5 s request timeout."""
    app = ready_app(tiny_checkpoint, batch_max_wait_ms=30_000.0, batch_wait_policy="fixed",
                    request_timeout_s=0.5)
    try:
        r = post(app.test_client(), png())
        assert r.status_code == 504
        assert r.get_json()["code"] == "timeout" and "Retry-After" in r.headers
    finally:
        app.extensions["facesketch"].close()


def test_full_queue_answers_503_with_retry_after(tiny_checkpoint):
    import threading
    from webui.engine import QueueFull
    app = ready_app(tiny_checkpoint, queue_size=1, batch_max_size=1, retry_after_s=2)
    holder = app.extensions["facesketch"]
    batcher = holder.batcher
    client = app.test_client()
    # Hold the engine inside its (real) translate call until the test lets it go, so
    # the one-slot queue stays full however fast this machine translates.
    gate, real = threading.Event(), batcher._translate_batch

    def held(images, direction):
        gate.wait(60)
        return real(images, direction=direction)

    batcher._translate_batch = held
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    jobs = []
    try:
        jobs.append(batcher.submit(img, "photo2sketch"))     # the engine takes it ...
        deadline = time.monotonic() + 30
        while batcher.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.qsize() == 0, "the engine never took the first job"
        jobs.append(batcher.submit(img, "photo2sketch"))     # ... and this one waits
        with pytest.raises(QueueFull, match="queue is full"):
            batcher.submit(img, "photo2sketch")
        r = post(client, png())
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "2"
        body = r.get_json()
        assert body["code"] == "busy" and "retry" in body["error"]
        assert client.get("/api/info").get_json()["server"]["rejected_queue_full"] >= 2
        gate.set()
        for j in jobs:
            assert j.wait(60).image.shape == (64, 64, 3)
        assert post(client, png()).status_code == 200   # and it recovers
    finally:
        gate.set()
        holder.close()


# ----------------------------------------------------------------- CUFS
@pytest.mark.cufs
def test_cufs_photo_and_sketch_domains(client, cufs):
    from facesketch.domain import detect_domain
    from facesketch.imageio import decode
    for folder, domain, direction in (("test_photos", "photo", "photo2sketch"),
                                      ("test_sketches", "sketch", "sketch2photo")):
        for name in ("1.jpg", "150.jpg"):
            path = cufs / folder / name
            r = post(client, path.read_bytes(), name=name)
            assert r.status_code == 200
            expected, _ = detect_domain(decode(path))
            assert r.headers["X-Detected-Domain"] == expected == domain, (folder, name)
            assert r.headers["X-Direction"] == direction
            assert Image.open(io.BytesIO(r.data)).size == Image.open(path).size


# ----------------------------------------------------------------- serve (waitress)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post_multipart(url: str, data: bytes, filename="x.png", timeout: float = 30.0):
    boundary = "----facesketchtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _serve_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NGROK_AUTHTOKEN", "PYNGROK_NGROK_PATH")}
    env["HOME"] = str(tmp_path)          # pyngrok may write a default (token-less) ngrok.yml there
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def _start_serve(tmp_path, args, env):
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    return proc, log


def _wait_health(base: str, proc, log, seconds: float = 180.0):
    deadline = time.time() + seconds
    status = None
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read()}")
        try:
            status, _, _ = _get(base + "/api/health", timeout=5)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            status = None
        if status == 200:
            return
        time.sleep(0.3)
    log.seek(0)
    pytest.fail(f"health never 200 (last {status}):\n{log.read()}")


@pytest.mark.slow
def test_serve_command_waitress_share_without_token(tiny_bundle, tmp_path):
    port = _free_port()
    env = _serve_env(tmp_path)
    proc, log = _start_serve(tmp_path, ["--model", str(tiny_bundle), "--port", str(port),
                                        "--threads", "4", "--share"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_health(base, proc, log)
        status, headers, body = _get(base + "/")
        assert status == 200 and b'id="file-input"' in body
        assert headers.get("Server") == "facesketch"            # waitress, not werkzeug
        status, headers, body = _post_multipart(base + "/api/translate", png(40, 30))
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(body)).size == (40, 30)
        # over the limit, under 2x: Flask's JSON 413 through waitress
        status, headers, body = _post_multipart(base + "/api/translate",
                                                b"\x89PNG" + b"\0" * (11 * 1024 * 1024))
        assert status == 413 and json.loads(body)["code"] == "upload_too_large"
        assert proc.poll() is None                                  # still serving
        log.seek(0)
        text = log.read()
        assert f"http://127.0.0.1:{port}/" in text
        assert "NGROK_AUTHTOKEN is not set" in text and "serving locally only" in text
        assert "model ready" in text
        proc.terminate()                                            # SIGTERM: a clean stop
        assert proc.wait(30) == 0
        log.seek(0)
        assert log.read().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def _share_script(port: int) -> str:
    return ("import sys\nfrom webui.serve import open_tunnel\n"
            f"url = open_tunnel({port})\nprint('RESULT', url)\n"
            "print('PYNGROK_IMPORTED', 'pyngrok' in sys.modules)\n")


@pytest.mark.parametrize("agent,expect", [("/nonexistent/ngrok", "agent is not installed"),
                                          ("/bin/false", "tunnel could not open")])
def test_share_with_token_but_no_tunnel_fails_cleanly(tmp_path, agent, expect):
    """With a token but no working agent/network: a clear message, no URL, and the
    token never appears in the output."""
    pytest.importorskip("pyngrok")
    token = "facesketch-test-token-do-not-print-8c1f"
    env = _serve_env(tmp_path, NGROK_AUTHTOKEN=token, PYNGROK_NGROK_PATH=agent)
    res = subprocess.run([sys.executable, "-c", _share_script(_free_port())], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert expect in out and "serving locally only" in out
    assert "RESULT None" in out
    assert token not in out
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert token not in f.read_text(errors="replace"), f


def test_serve_imports_neither_pyngrok_nor_torch_by_itself():
    """(The CLI's parser reads training.config for `train`'s options: a torch-free dataclass.)"""
    code = ("import sys\nimport app.cli, webui, webui.serve, webui.api, webui.engine\n"
            "from webui import WebConfig\n"
            "p = app.cli.build_parser().parse_args(['serve', '--model', 'm', '--port', '0'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyngrok', 'torch')\n"
            "             or (m.startswith('training.') and m != 'training.config')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_serve_missing_model_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=_serve_env(tmp_path))
    assert res.returncode == 2
    assert "model not found" in res.stderr


def test_serve_default_model_lookup(tmp_path, monkeypatch):
    from webui import serve as serve_mod
    monkeypatch.chdir(tmp_path)
    packaged = REPO / "facesketch" / "models" / "default"
    if packaged.exists():
        assert serve_mod.default_model() == packaged
    else:
        with pytest.raises(FileNotFoundError, match="--model"):
            serve_mod.default_model()
    (tmp_path / "bundles" / "default").mkdir(parents=True)
    assert serve_mod.default_model() == Path("bundles") / "default"


# ----------------------------------------------------------------- torch-free serving
@pytest.mark.parametrize("backend,block_torch", [("onnx", False), ("auto", True)])
def test_bundle_is_served_without_torch(tiny_bundle, tmp_path, backend, block_torch):
    """A bundle is served with torch never imported: with an engine chosen by
    format, and with "auto" on a box where torch cannot be imported at all
    (sys.modules['torch'] = None is how Python spells "not installed")."""
    code = (
        "import io, sys\n"
        + ("sys.modules['torch'] = None\n" if block_torch else "")
        + "import numpy as np\n"
        "from PIL import Image\n"
        "from webui import WebConfig, create_app\n"
        f"app = create_app(WebConfig(model={str(tiny_bundle)!r}, backend={backend!r}))\n"
        "h = app.extensions['facesketch']\n"
        "assert h.wait(300), h.error\n"
        "buf = io.BytesIO()\n"
        "Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), np.uint8)).save(buf, 'PNG')\n"
        "r = app.test_client().post('/api/translate', data={'image': (io.BytesIO(buf.getvalue()), 'x.png')})\n"
        "print('STATUS', r.status_code, r.headers.get('X-Backend'))\n"
        "print('TORCH', sys.modules.get('torch') is not None)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=_serve_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "STATUS 200" in res.stdout, res.stdout
    assert "TORCH False" in res.stdout, res.stdout
    assert "torch" not in res.stdout.split("STATUS 200", 1)[1].splitlines()[0]


# ----------------------------------------------------------------- a model that cannot load
def _damaged_bundle(tiny_bundle: Path, dst: Path) -> Path:
    """A copy of tiny_bundle's ONNX engines, one of them corrupted: nothing loads."""
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    m["files"] = [e for e in m["files"] if e["format"] == "onnx"]
    dst.mkdir(parents=True)
    for e in m["files"]:
        (dst / e["path"]).write_bytes((tiny_bundle / e["path"]).read_bytes())
    (dst / "manifest.json").write_text(json.dumps(m))
    (dst / "photo2sketch.onnx").write_bytes(b"\0" * 64)
    return dst


def test_failed_model_errors_carry_no_absolute_path(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESKETCH_CACHE", str(tmp_path / "cache"))
    bundle = _damaged_bundle(tiny_bundle, tmp_path / "mybundle")
    app = make_app(bundle)
    holder = app.extensions["facesketch"]
    assert holder.wait(120) is False
    assert str(bundle) in holder.error_detail            # the console/log keep the full path
    c = app.test_client()
    r = c.get("/api/health")
    assert r.status_code == 503 and r.get_json()["code"] == "model_failed"
    info = c.get("/api/info").get_json()
    for text in (r.get_data(as_text=True), json.dumps(info)):
        assert str(tmp_path) not in text
        assert "mybundle/photo2sketch.onnx failed its integrity check" in text
    assert "mybundle/photo2sketch.onnx failed its integrity check" in r.get_json()["error"]


def test_public_message_strips_absolute_paths():
    from webui.engine import public_message
    msg = public_message("BundleError: /srv/m/bundle/x.onnx is bad; cache /home/u/.cache/fs/a.json; "
                         "see http://127.0.0.1:8000/v2/models and rel/path.onnx", "/srv/m/bundle")
    assert msg == ("BundleError: bundle/x.onnx is bad; cache a.json; "
                   "see http://127.0.0.1:8000/v2/models and rel/path.onnx")


def test_serve_exits_1_when_no_backend_loads(tiny_bundle, tmp_path, monkeypatch):
    """The server stops by itself (exit status 1) instead of answering 503 forever."""
    from webui import WebConfig
    from webui.serve import serve
    monkeypatch.setenv("FACESKETCH_CACHE", str(tmp_path / "cache"))
    bundle = _damaged_bundle(tiny_bundle, tmp_path / "mybundle")
    said: list[str] = []
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        serve(WebConfig(model=str(bundle)), port=0, threads=2, say=said.append)), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), f"serve() still running: {said}"
    assert result == [1], said
    text = "\n".join(said)
    assert "model FAILED to load" in text and "photo2sketch.onnx failed its integrity check" in text
    assert said[-1] == "stopped"


@pytest.mark.slow
def test_serve_command_exits_1_when_no_backend_loads(tiny_bundle, tmp_path):
    bundle = _damaged_bundle(tiny_bundle, tmp_path / "mybundle")
    res = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model", str(bundle),
                          "--port", "0"], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env=_serve_env(tmp_path, FACESKETCH_CACHE=str(tmp_path / "cache")))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "model FAILED to load" in res.stdout and "stopped" in res.stdout
