"""End to end in a real browser: `facesketch serve`'s waitress server on
127.0.0.1, the page driven by headless Debian Chromium through Playwright.

Uploads a CUFS test photo and a CUFS test sketch, checks the result image
appears at the input's size and that the page shows the domain the detector
finds (with the tiny random model the translation itself is noise; domain
detection does not depend on the model), downloads the result, drives the
webcam path with Chromium's fake camera, and saves screenshots (desktop and
phone) to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.cufs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A synthetic camera (moving test pattern) and auto-accepted permission prompt.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 120_000


def _need_browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download "
                    "needed, the test uses /usr/bin/chromium)")


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """The real waitress server (as `facesketch serve` builds it) on a free loopback port."""
    _need_browser()
    from webui.config import WebConfig
    from webui.serve import make_server
    app, srv = make_server(WebConfig(model=str(tiny_checkpoint)), host="127.0.0.1", port=0,
                           threads=4)
    thread = threading.Thread(target=srv.run, name="waitress-test", daemon=True)
    thread.start()
    holder = app.extensions["facesketch"]
    assert holder.wait(180), holder.error
    yield f"http://127.0.0.1:{srv.effective_port}", app
    srv.close()
    holder.close()
    thread.join(10)


@pytest.fixture(scope="module")
def playwright():
    """One Playwright driver per module (its sync API cannot be started twice at once)."""
    _need_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + FAKE_CAMERA_ARGS,
                                   headless=True)
    yield b
    b.close()


def _watch(page, base: str) -> dict:
    """Record every request's origin, console errors, and the API calls in flight."""
    seen = {"urls": [], "console_errors": [], "in_flight": 0, "max_in_flight": 0, "api_calls": 0}

    def on_request(req):
        seen["urls"].append(req.url)
        if req.url.endswith("/api/translate"):
            seen["api_calls"] += 1
            seen["in_flight"] += 1
            seen["max_in_flight"] = max(seen["max_in_flight"], seen["in_flight"])

    def on_done(req):
        if req.url.endswith("/api/translate"):
            seen["in_flight"] -= 1

    page.on("request", on_request)
    page.on("requestfinished", on_done)
    page.on("requestfailed", on_done)
    page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
    page.on("pageerror", lambda e: seen["console_errors"].append(str(e)))
    return seen


def _open(ctx, base: str):
    """A new page on the app, watched (see _watch), once the model is ready."""
    page = ctx.new_page()
    seen = _watch(page, base)
    page.goto(base + "/", wait_until="load")
    page.wait_for_function("() => document.getElementById('status').textContent === 'ready'",
                           timeout=TIMEOUT_MS)
    return page, seen


def _only_local(seen: dict, base: str) -> None:
    foreign = [u for u in seen["urls"] if not (u.startswith(base) or u.startswith(("blob:", "data:")))]
    assert foreign == [], f"the page fetched from elsewhere: {foreign}"


def _convert(page, path: Path) -> dict:
    """Choose a file, wait for its result; returns what the page shows."""
    before = page.get_attribute("#result-img", "src")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function(
        "(before) => { const r = document.getElementById('result-img');"
        " return !r.hidden && r.src && r.src !== before && r.complete && r.naturalWidth > 0; }",
        arg=before, timeout=TIMEOUT_MS)
    return page.evaluate(
        "() => ({domain: document.getElementById('domain').textContent,"
        " confidence: document.getElementById('confidence').textContent,"
        " backend: document.getElementById('backend').textContent,"
        " latency: document.getElementById('latency').textContent,"
        " direction: document.getElementById('result-img').dataset.direction,"
        " w: document.getElementById('result-img').naturalWidth,"
        " h: document.getElementById('result-img').naturalHeight,"
        " error: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent})")


def test_page_converts_cufs_photo_and_sketch(server, browser, cufs):
    from facesketch.imageio import decode
    from facesketch.domain import detect_domain
    base, app = server
    ARTIFACTS.mkdir(exist_ok=True)
    backend = app.extensions["facesketch"].translator.backend
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page, seen = _open(ctx, base)

    cases = [(cufs / "test_photos" / "1.jpg", "photo", "photo2sketch"),
             (cufs / "test_sketches" / "1.jpg", "sketch", "sketch2photo")]
    for path, truth, direction in cases:
        shown = _convert(page, path)
        expected, _ = detect_domain(decode(path))
        assert shown["error"] == ""
        assert shown["domain"] == expected == truth, (path, shown)
        assert shown["direction"] == direction
        assert shown["backend"] == backend
        assert shown["confidence"].endswith("%") and shown["latency"].endswith("ms")
        assert (shown["w"], shown["h"]) == Image.open(path).size      # 200 x 250
        page.screenshot(path=str(ARTIFACTS / f"browser_desktop_{truth}.png"), full_page=True)

        # Download the result: a PNG at the input's size.
        with page.expect_download(timeout=TIMEOUT_MS) as dl:
            page.click("#download")
        saved = ARTIFACTS / f"download_{truth}.png"
        dl.value.save_as(str(saved))
        assert dl.value.suggested_filename == f"facesketch-{direction}.png"
        img = Image.open(saved)
        assert img.format == "PNG" and img.size == Image.open(path).size

    # Direction override: the sketch again, forced the "wrong" way.
    page.select_option("#direction", "photo2sketch")
    page.wait_for_function("() => document.getElementById('result-img').dataset.direction === 'photo2sketch'",
                           timeout=TIMEOUT_MS)
    assert page.text_content("#domain") == "sketch"

    # A file that is not an image: a clear error on the page, and the page still works.
    bad = ARTIFACTS / "not-an-image.png"
    bad.write_bytes(b"this is not an image\n" * 10)
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert "not an image" in page.text_content("#error")
    page.select_option("#direction", "auto")
    shown = _convert(page, cases[0][0])
    assert shown["domain"] == "photo" and shown["error"] == ""

    assert seen["max_in_flight"] == 1
    # the browser logs the refused upload's 415; nothing else may go wrong
    others = [e for e in seen["console_errors"] if not ("Failed to load resource" in e and "415" in e)]
    assert others == [], seen["console_errors"]
    _only_local(seen, base)
    ctx.close()


def test_page_on_a_phone(server, browser, cufs):
    base, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                              is_mobile=True, has_touch=True)
    page, seen = _open(ctx, base)
    shown = _convert(page, cufs / "test_photos" / "2.jpg")
    assert shown["domain"] == "photo"
    # Nothing wider than the screen: no horizontal scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for sel in ("#file-input + label", "#camera-btn", "#direction", "#result-img", "#input-img"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 391, (sel, box)
    page.screenshot(path=str(ARTIFACTS / "browser_phone.png"), full_page=True)
    assert seen["console_errors"] == []
    _only_local(seen, base)
    ctx.close()


def test_webcam_converts_continuously_one_request_at_a_time(server, browser):
    """Chromium's fake camera: frames convert one after another while the camera
    is on, never two in flight, and stop when it is turned off."""
    base, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
    page, seen = _open(ctx, base)
    page.click("#camera-btn")
    page.wait_for_function("() => document.getElementById('camera-btn').textContent === 'Stop camera'",
                           timeout=TIMEOUT_MS)
    # several frames, sent one after another
    for _ in range(600):
        if seen["api_calls"] >= 5:
            break
        page.wait_for_timeout(100)
    assert seen["api_calls"] >= 5, seen["api_calls"]
    assert seen["max_in_flight"] == 1
    assert page.text_content("#roundtrip").endswith("ms")
    page.screenshot(path=str(ARTIFACTS / "browser_camera.png"), full_page=True)
    page.click("#camera-btn")
    page.wait_for_function("() => document.getElementById('camera-btn').textContent === 'Start camera'")
    page.wait_for_timeout(500)
    after_stop = seen["api_calls"]
    page.wait_for_timeout(1000)
    assert seen["api_calls"] == after_stop, "frames were still sent after the camera stopped"
    assert not page.is_hidden("#result-img")
    assert seen["console_errors"] == []
    _only_local(seen, base)
    ctx.close()


def test_off_centre_face_comes_back_framed_with_its_box(server, browser, fs2k, tmp_path):
    """A phone-style picture (the face small and off centre on a busy background): the
    result is the framed face (4:5), the page draws the face box over the input where
    the face is, and says what it did; "whole image" turns it off."""
    from facesketch.imageio import decode
    from tests.test_face import off_centre
    base, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    frame = off_centre(decode(fs2k / "style3" / "photos" / "0005.jpg"))
    path = tmp_path / "phone.jpg"
    Image.fromarray(frame).save(path, quality=90)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page, seen = _open(ctx, base)
    shown = _convert(page, path)
    assert shown["error"] == ""
    assert abs(shown["w"] / shown["h"] - 0.8) < 0.01, shown
    assert page.text_content("#face") == "aligned"
    page.wait_for_selector("#face-box:not([hidden])", timeout=TIMEOUT_MS)
    box = page.locator("#face-box").bounding_box()
    img = page.locator("#input-img").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # the face sits at 72% across and 30% down the picture; the box is drawn there
    assert img["x"] + 0.6 * img["width"] < cx < img["x"] + 0.85 * img["width"], (box, img)
    assert box["width"] < 0.5 * img["width"]
    page.screenshot(path=str(ARTIFACTS / "browser_off_centre_face.png"), full_page=True)
    before = page.get_attribute("#result-img", "src")
    page.select_option("#align", "off")
    page.wait_for_function("(b) => document.getElementById('result-img').src !== b", arg=before,
                           timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('face').textContent === 'off'",
                           timeout=TIMEOUT_MS)
    assert page.is_hidden("#face-box")
    w, h = page.evaluate("() => [document.getElementById('result-img').naturalWidth,"
                         " document.getElementById('result-img').naturalHeight]")
    assert (w, h) == (frame.shape[1], frame.shape[0])
    assert seen["console_errors"] == []
    _only_local(seen, base)
    ctx.close()


def _y4m(frames: list, path: Path, fps: int = 10) -> None:
    """RGB frames as a Y4M (4:2:0) video: Chromium's fake camera plays it in a loop."""
    import numpy as np
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            x = rgb.astype(np.float32)
            y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
            u = 128 + (x[..., 2] - y) * 0.564
            v = 128 + (x[..., 0] - y) * 0.713
            sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(np.clip(plane + 0.5, 0, 255).astype(np.uint8).tobytes())


def test_webcam_follows_a_moving_face(server, playwright, fs2k, tmp_path):
    """A camera whose picture is a real face moving across a room (a Y4M file played by
    Chromium's fake camera): the face box the page draws follows it."""
    import numpy as np
    from facesketch.imageio import decode
    from tests.test_face import off_centre
    base, _ = server
    photo = decode(fs2k / "style3" / "photos" / "0005.jpg")
    frames = [off_centre(photo, canvas=(640, 480), scale=0.6, at=(x, 0.45))
              for x in np.r_[np.linspace(0.3, 0.7, 20), np.linspace(0.7, 0.3, 20)]]
    video = tmp_path / "moving_face.y4m"
    _y4m(frames, video)
    # a browser of its own: its camera plays the file
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + FAKE_CAMERA_ARGS + [
        f"--use-file-for-fake-video-capture={video}"])
    ctx = b.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"])
    page, seen = _open(ctx, base)
    page.click("#camera-btn")
    boxes, faces = [], set()
    for _ in range(400):
        box = page.get_attribute("#face-box", "data-box")
        faces.add(page.text_content("#face"))
        if box:
            x, y, w, h, _ = (float(v) for v in box.split(","))
            boxes.append(x + w / 2)
        if len(boxes) >= 30 and max(boxes) - min(boxes) > 120:
            break
        page.wait_for_timeout(100)
    page.screenshot(path=str(ARTIFACTS / "browser_camera_moving_face.png"), full_page=True)
    page.click("#camera-btn")
    assert seen["max_in_flight"] == 1
    assert seen["console_errors"] == []
    ctx.close()
    b.close()
    assert boxes, f"no face box while the camera showed a face (faces: {faces})"
    # the canvas sent is the 640x480 camera frame; the face's centre moved 0.3 -> 0.7 of it
    assert max(boxes) - min(boxes) > 120, (min(boxes), max(boxes), faces)
    assert {"aligned", "aligned (smoothed)"} & faces
