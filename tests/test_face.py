"""Face finding and alignment (facesketch.face, runtime.align) on real FS2K and CUFS
images, the no-face path, extreme sizes, the API's X-Face-Box, evaluate --align and
the trainer's --align."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from facesketch import face as F
from facesketch.imageio import decode, list_images


@pytest.fixture(scope="module")
def finder() -> F.FaceFinder:
    return F.default_finder()


def _eye_error(finder: F.FaceFinder, crop: np.ndarray) -> float:
    """Largest eye offset on the crop from the template, in template face widths."""
    from benchmarks.face_align import crop_errors
    e = crop_errors(finder, crop)
    assert e is not None, "no face found again on the aligned crop"
    return e[0]


def off_centre(photo: np.ndarray, canvas=(1600, 1200), scale=0.55, at=(0.72, 0.3)) -> np.ndarray:
    """A phone-style picture: the photo small and off centre on a busy background."""
    rng = np.random.default_rng(0)
    w, h = canvas
    bg = rng.integers(0, 255, (h // 40 + 1, w // 40 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(bg).resize((w, h), Image.NEAREST)
    small = Image.fromarray(photo).resize((round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
    img.paste(small, (round(w * at[0] - small.width / 2), round(h * at[1] - small.height / 2)))
    return np.asarray(img)


# ------------------------------------------------------------------ the model file
def test_model_file_carries_template_and_licence(finder):
    t = finder.template
    assert t["names"] == list(F.KEYPOINTS) and len(t["points"]) == 6
    pts = np.asarray(t["points"])
    right_eye, left_eye, mouth = pts[0], pts[1], pts[3]
    assert right_eye[0] < 0.5 < left_eye[0]            # image left = the subject's right eye
    assert mouth[1] > right_eye[1] + 0.1                # the mouth below the eyes
    assert "Apache" in finder.source


def test_missing_or_broken_model_says_why(tmp_path):
    with pytest.raises(F.FaceFinderUnavailable, match="missing"):
        F.FaceFinder(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(F.FaceFinderUnavailable, match="does not load"):
        F.FaceFinder(bad)


# ------------------------------------------------------------------ geometry
def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (3, 2))
    ang, s, t = math.radians(17), 1.7, np.array([30.0, -12.0])
    rot = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    dst = src @ rot.T + t
    m = F.similarity(src, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-7)
    # mirrored points get the best rotation, never a reflection
    m2 = F.similarity(src, src * np.array([-1, 1]))
    assert np.linalg.det(m2[:, :2]) > 0


def test_weighted_similarity_favours_the_heavy_points(finder):
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 200, (3, 2))
    dst = src * 1.3 + np.array([5.0, 9.0])
    m = F.similarity(src, dst, weights=[3.0, 3.0, 1.0])          # exact data: any weights
    assert np.allclose(m[:, :2], 1.3 * np.eye(2), atol=1e-9)
    moved = dst.copy()
    moved[2] += [25.0, -20.0]                                    # the third point disagrees
    fit = lambda w: np.hypot(*((np.c_[src, np.ones(3)] @ F.similarity(src, moved, w).T)  # noqa: E731
                               - moved)[:2].T).max()
    assert fit([1000.0, 1000.0, 1.0]) < 0.1 < fit(None)         # the heavy points fit exactly
    # the template's spreads (CUFS train) make the eyes count most
    w = finder.point_weights()
    assert w is not None and w[0] > 2 * w[2] and w[1] > 2 * w[2]


def test_box_header_round_trips_to_the_same_transform(finder, fs2k):
    rgb = decode(fs2k / "style3" / "photos" / "0001.jpg")
    al = finder.align(rgb, finder.detect(rgb)[0])
    h, w = al.crop.shape[:2]
    m = F.box_matrix(F.parse_box(al.header()), w, h)
    assert np.allclose(m, al.matrix, atol=0.05)
    for bad in ("1,2,3", "a,b,c,d,e", "0,0,-5,10,0", "0,0,nan,10,0"):
        with pytest.raises(ValueError):
            F.parse_box(bad)


def test_smoothing_blends_small_moves_and_takes_jumps():
    prev = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 100.0]])
    near = prev.copy()
    near[:, 2] += 4
    far = prev.copy()
    far[:, 2] += 80
    s = F.smooth(prev, near, face_width=100)
    assert np.allclose(s[:, 2], 100 + 4 * 0.35)
    assert F.smooth(prev, far, face_width=100) is far
    assert F.smooth(None, near, face_width=100) is near


# ------------------------------------------------------------------ real images
def test_finds_faces_in_fs2k_photos_and_sketches(finder, fs2k):
    for kind in ("photos", "sketches"):
        paths = list_images(fs2k / "style3" / kind)[::40] + list_images(fs2k / "style2" / kind)[::20]
        found = 0
        for p in paths:
            rgb = decode(p)
            faces = finder.detect(rgb)
            if faces:
                found += 1
                f = faces[0]
                x0, y0, x1, y1 = f.box
                assert 0 < f.width and f.score >= F.MIN_SCORE
                eyes = f.keypoints[:2]
                assert np.all((eyes[:, 0] > x0 - 5) & (eyes[:, 0] < x1 + 5)), p.name
                assert eyes[0, 0] < eyes[1, 0], f"{p.name}: eyes out of order"
        assert found >= len(paths) - 1, f"{kind}: faces in {found} of {len(paths)}"


def test_aligned_crop_matches_the_cufs_framing(finder, fs2k):
    errors = []
    for p in list_images(fs2k / "style3" / "photos")[::48]:
        rgb = decode(p)
        faces = finder.detect(rgb)
        assert faces, p.name
        al = finder.align(rgb, faces[0])
        h, w = al.crop.shape[:2]
        assert abs(w / h - 0.8) < 0.01 and w >= 200
        assert not finder.is_framed(rgb, faces[0]), f"{p.name} is not a CUFS-style crop"
        errors.append(_eye_error(finder, al.crop))
    assert np.mean(errors) < 0.05, errors
    assert max(errors) < 0.12, errors


def test_cufs_crops_count_as_already_framed(finder, cufs):
    paths = list_images(cufs / "test_photos")[:10] + list_images(cufs / "test_sketches")[:10]
    framed = sum(finder.is_framed(rgb, finder.detect(rgb)[0]) for rgb in map(decode, paths))
    assert framed >= 18


def test_small_off_centre_face_is_found_by_the_window_search(finder, fs2k):
    photo = decode(fs2k / "style3" / "photos" / "0003.jpg")
    frame = off_centre(photo, canvas=(2000, 1500), scale=0.5, at=(0.8, 0.25))
    faces = finder.detect(frame)
    assert faces, "the small face was not found"
    cx = (faces[0].box[0] + faces[0].box[2]) / 2
    assert 0.65 * 2000 < cx < 0.95 * 2000
    al = finder.align(frame, faces[0])
    assert _eye_error(finder, al.crop) < 0.1


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (16, 16), (20, 400), (400, 20), (2048, 2048), (97, 2000)])
def test_no_face_and_extreme_shapes(finder, shape):
    rng = np.random.default_rng(0)
    rgb = np.full((*shape, 3), 128, np.uint8)
    assert finder.detect(rgb) == []
    noise = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    for face in finder.detect(noise):          # noise may or may not fire; never crash
        finder.align(noise, face)


def test_paste_changes_only_the_crop(finder, fs2k):
    rgb = decode(fs2k / "style3" / "photos" / "0001.jpg")
    al = finder.align(rgb, finder.detect(rgb)[0])
    black = np.zeros_like(al.crop)
    out = F.paste(rgb, black, al)
    assert out.shape == rgb.shape
    inside = al.matrix @ np.array([al.crop.shape[1] / 2, al.crop.shape[0] / 2, 1])
    x, y = int(inside[0]), int(inside[1])
    assert out[y, x].max() < 10                       # the crop's centre is now black
    assert np.array_equal(out[:3, :3], rgb[:3, :3]) or al.corners[:, 1].min() < 3


# ------------------------------------------------------------------ the Translator
def test_translator_align_modes(tiny_bundle, fs2k, cufs):
    from runtime import Translator
    t = Translator.load(tiny_bundle, backend="onnx")
    photo = decode(fs2k / "style3" / "photos" / "0001.jpg")
    r = t.translate(photo, align="auto")
    assert r.face == "aligned" and r.face_box is not None
    assert abs(r.image.shape[1] / r.image.shape[0] - 0.8) < 0.01
    off = t.translate(photo, align="off")
    assert off.face == "off" and off.face_box is None and off.image.shape == photo.shape
    pasted = t.translate(photo, align="auto", paste=True)
    assert pasted.image.shape == photo.shape
    cufs_photo = decode(cufs / "test_photos" / "1.jpg")
    same = t.translate(cufs_photo, align="auto")
    assert same.face == "already framed" and same.image.shape == cufs_photo.shape
    flat = t.translate(np.full((300, 400, 3), 200, np.uint8), align="auto")
    assert flat.face == "no face found" and flat.image.shape == (300, 400, 3)
    steady = t.translate(photo, align="auto", previous_box=r.face_box)
    assert steady.face.startswith("aligned")
    with pytest.raises(ValueError, match="align"):
        t.translate(photo, align="sideways")
    t.close()


# ------------------------------------------------------------------ the API
def _post(client, data: bytes, **fields):
    form = {"image": (io.BytesIO(data), "face.jpg"), **fields}
    return client.post("/api/translate", data=form, content_type="multipart/form-data")


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_api_frames_an_off_centre_face(tiny_checkpoint, fs2k):
    from tests.test_webui import ready_app
    app = ready_app(tiny_checkpoint)
    try:
        client = app.test_client()
        frame = off_centre(decode(fs2k / "style3" / "photos" / "0005.jpg"))
        data = _jpeg(frame)
        r = _post(client, data)
        assert r.status_code == 200, r.get_json()
        assert r.headers["X-Face"] == "aligned"
        x, y, w, h, _ = F.parse_box(r.headers["X-Face-Box"])
        assert x + w / 2 > 0.6 * frame.shape[1] and y + h / 2 < 0.5 * frame.shape[0]
        out = Image.open(io.BytesIO(r.data))
        assert abs(out.width / out.height - 0.8) < 0.01
        r_off = _post(client, data, align="off")
        assert r_off.status_code == 200 and "X-Face-Box" not in r_off.headers
        assert r_off.headers["X-Face"] == "off"
        assert Image.open(io.BytesIO(r_off.data)).size == (frame.shape[1], frame.shape[0])
        r_paste = _post(client, data, paste="1")
        assert Image.open(io.BytesIO(r_paste.data)).size == (frame.shape[1], frame.shape[0])
        r_video = _post(client, data, face_box=r.headers["X-Face-Box"])
        assert r_video.status_code == 200 and r_video.headers["X-Face"].startswith("aligned")
        bad = _post(client, data, align="sideways")
        assert bad.status_code == 400 and bad.get_json()["code"] == "bad_align"
        bad = _post(client, data, face_box="1,2,three")
        assert bad.status_code == 400 and bad.get_json()["code"] == "bad_face_box"
        flat = _post(client, _jpeg(np.full((240, 320, 3), 90, np.uint8)))
        assert flat.status_code == 200 and flat.headers["X-Face"] == "no face found"
    finally:
        app.extensions["facesketch"].close()


# ------------------------------------------------------------------ evaluate and train
def test_evaluate_align_scores_the_same_face_region(tiny_bundle, fs2k):
    from app.evaluate import evaluate
    reports = {m: evaluate(tiny_bundle, fs2k, limit=3, backend="onnx", align=m, progress=lambda *a: None)
               for m in ("auto", "off")}
    for m, rep in reports.items():
        assert rep["data"]["align"] == m and rep["data"]["face_regions"] == 3
        assert rep["data"]["subsets"] == {"style2": 3}
        # both modes score the same pixels of the targets: doing nothing scores the same
        assert 0 < rep["input_vs_target"]["photo2sketch"]["all"]["fsim"] < 1
    a, o = (reports[m]["input_vs_target"]["photo2sketch"]["all"]["fsim"] for m in ("auto", "off"))
    assert a == pytest.approx(o, abs=1e-9)


def test_face_region_past_the_edge_is_scored_as_the_target_in_both_modes():
    """The part of a face region that lies outside the photo is the target's fill in the
    translation too, so neither align mode scores its own fill there."""
    from app.evaluate import _fill_from, crop_region, inside_mask
    photo = np.full((100, 80, 3), 200, np.uint8)
    # crop 60x50 starting 10 px left of and 5 px above the photo, at scale 1
    region = (np.array([[1.0, 0.0, -10.0], [0.0, 1.0, -5.0]]), (60, 50))
    inside = inside_mask(region, photo)
    assert inside.shape == (50, 60)
    assert not inside[:, :10].any() and not inside[:5].any() and inside[5:, 10:].all()
    target = crop_region(np.zeros((100, 80, 3), np.uint8), region, photo)
    out = np.full((50, 60, 3), 77, np.uint8)
    filled = _fill_from(out, target, ~inside)
    assert (filled[~inside] == target[~inside]).all() and (filled[inside] == 77).all()
    assert (out == 77).all()                      # the translation itself is not modified
    with pytest.raises(ValueError, match="differ in shape"):
        _fill_from(out[:10], target, ~inside)


def test_trainer_aligns_its_data_when_asked(tmp_path, fs2k):
    from training.data import load_domain
    import torch
    stats: dict = {}
    dom = load_domain("photos", fs2k / "style2" / "photos", 64, 4, torch.device("cpu"),
                      align="auto", stats=stats)
    assert len(dom) == 4 and stats["aligned"] + stats.get("already framed", 0) == 4
    plain = load_domain("photos", fs2k / "style2" / "photos", 64, 4, torch.device("cpu"))
    assert not torch.equal(dom.images, plain.images)
