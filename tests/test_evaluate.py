"""facesketch evaluate: pairing, report format, Markdown with the published anchors,
image grid; on a tiny random checkpoint (fast: the numbers are meaningless, the
format and the plumbing are what is tested)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from app import evaluate as E
from app.cli import main


def _check_ranges(summary, keys):
    assert summary["n"] >= 1
    for k in keys:
        v = summary[k]
        if k == "psnr":
            assert v is None or 0 < v < 100
        elif k == "ssim":
            assert -1 <= v <= 1
        elif k == "stroke":                     # 0 = the target's strokes
            assert 0 < v < 5
        else:                                   # fsim, fsimc
            assert 0 < v <= 1


@pytest.mark.cufs
def test_cli_evaluate_on_cufs_writes_report_table_and_grid(tiny_checkpoint, cufs, tmp_path, capsys):
    out, md, grid = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "grid.png"
    rc = main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(cufs), "--limit", "3",
               "--backend", "torch-cpu", "--json", str(out), "--markdown", str(md),
               "--grid", str(grid)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) >= {"model", "data", "definitions", "metrics", "input_vs_target", "detector",
                           "anchors", "grid", "timing", "per_image", "machine"}
    assert report["data"]["pairs"] == 3 and report["data"]["native_sizes"] == ["200x250"]
    assert report["data"]["subsets"] == {"CUHK_student": 3}       # 1.jpg..3.jpg
    assert report["data"]["outputs_resized_to_target"] == 0
    for direction, keys in E.METRIC_KEYS.items():
        assert set(report["metrics"][direction]) == {"all", "CUHK_student"}
        for group in ("all", "CUHK_student"):
            _check_ranges(report["metrics"][direction][group], keys)
            _check_ranges(report["input_vs_target"][direction][group], keys)
    # a random generator is far from the artist's sketch; the photo itself is closer
    p2s = report["metrics"]["photo2sketch"]["all"]
    assert p2s["ssim"] < report["input_vs_target"]["photo2sketch"]["all"]["ssim"]
    assert [r["name"] for r in report["per_image"]] == ["1.jpg", "2.jpg", "3.jpg"]
    assert report["per_image"][0]["sketch2photo"].keys() == {"ssim", "fsim", "fsimc", "psnr",
                                                               "checkerboard_db", "cross_hatch"}
    assert report["per_image"][0]["photo2sketch"].keys() == {"ssim", "fsim", "psnr", "stroke",
                                                               "checkerboard_db", "cross_hatch"}
    for direction in E.METRIC_KEYS:  # ours and the target's, on the model's grid
        assert np.isfinite(report["metrics"][direction]["all"]["checkerboard_db"])
        assert -10 < report["target_checkerboard_db"][direction]["all"]["checkerboard_db"] < 5
        assert 0 < report["metrics"][direction]["all"]["cross_hatch"] < 0.5
        assert 0.1 < report["target_cross_hatch"][direction]["all"]["cross_hatch"] < 0.3  # real faces
    det = report["detector"]["all"]
    assert det["n_photos"] == det["n_sketches"] == 3 and 0 <= det["accuracy"] <= 1
    assert det["photo_accuracy"] == det["sketch_accuracy"] == 1.0     # real CUFS faces
    assert report["model"]["detector"] == "cnn"
    table = md.read_text()
    assert "0.7343" in table and "0.7652" in table and "CUHK_student" in table
    assert "Texture measures" in table and "cross-hatch ours" in table and "stroke distance ours" in table
    assert "| photo -> sketch | all | 3 |" in table and "| sketch -> photo | CUHK_student | 3 |" in table
    assert table in printed
    img = Image.open(grid)
    assert img.size == (6 * 200 + 8, 22 + 3 * 250)
    assert report["grid"]["faces"] == ["1.jpg", "2.jpg", "3.jpg"]


def _cyclegan_test_layout(synthetic_data, root):
    """testA/testB with the same names; one unpaired file on each side."""
    for src, dst in (("trainA", "testA"), ("trainB", "testB")):
        (root / dst).mkdir(parents=True)
        for f in sorted((synthetic_data / src).iterdir())[:3]:
            shutil.copy(f, root / dst / f.name)
    shutil.copy(sorted((synthetic_data / "trainA").iterdir())[5], root / "testA" / "only_photo.png")
    shutil.copy(sorted((synthetic_data / "trainB").iterdir())[5], root / "testB" / "only_sketch.png")
    return root


def test_evaluate_bundle_on_a_cyclegan_layout(tiny_bundle, synthetic_data, tmp_path):
    data = _cyclegan_test_layout(synthetic_data, tmp_path / "data")
    report = E.evaluate(tiny_bundle, data, backend="ort-cpu", grid=tmp_path / "g.png")
    assert report["model"]["kind"] == "bundle" and report["model"]["backend"] == "ort-cpu"
    assert report["data"]["pairs"] == 3 and report["data"]["subsets"] == {}
    assert report["data"]["unpaired"] == {"photos": ["only_photo.png"], "sketches": ["only_sketch.png"]}
    assert set(report["metrics"]["photo2sketch"]) == {"all"}
    _check_ranges(report["metrics"]["sketch2photo"]["all"], E.METRIC_KEYS["sketch2photo"])
    assert "| sketch -> photo | all | 3 |" in E.markdown(report)
    assert (tmp_path / "g.png").is_file()
    json.dumps(report, allow_nan=False)            # plain JSON, no Infinity


def test_find_pairs_by_stem_subsets_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "p").mkdir()
    (tmp_path / "s").mkdir()
    for name in ("10", "2", "1"):
        Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "p" / f"{name}.jpg")
        Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(tmp_path / "s" / f"{name}.png")
    (tmp_path / "test_subsets.tsv").write_text("index\tsource\n1.jpg\tA\n2.jpg\tA\n10.jpg\tB\n")
    pairs = E.find_pairs(tmp_path, photos=tmp_path / "p", sketches=tmp_path / "s")
    assert pairs.names == ["1.jpg", "2.jpg", "10.jpg"]                 # natural order
    assert [f.name for f in pairs.sketches] == ["1.png", "2.png", "10.png"]
    assert pairs.subsets == {"1.jpg": "A", "2.jpg": "A", "10.jpg": "B"}
    with pytest.raises(ValueError, match="both"):
        E.find_pairs(photos=tmp_path / "p")
    with pytest.raises(ValueError, match="neither"):
        E.find_pairs(tmp_path)
    with pytest.raises(ValueError, match="same name"):
        E.find_pairs(photos=tmp_path / "p", sketches=tmp_path)
    with pytest.raises(FileNotFoundError):
        E.find_pairs(tmp_path / "missing")


def test_scores_of_a_perfect_translation():
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(128, 40, (60, 50, 3)), 0, 255).astype(np.uint8)
    s = E.sketch_scores(img, img)
    assert s["ssim"] == pytest.approx(1.0) and s["fsim"] == pytest.approx(1.0)
    assert s["psnr"] == float("inf")
    p = E.photo_scores(img, img)
    assert p["fsimc"] == pytest.approx(1.0) and p["fsim"] == pytest.approx(1.0)
    worse = E.photo_scores(np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8), img)
    assert worse["fsimc"] < 1 and worse["ssim"] < 1 and worse["psnr"] < 40


def test_default_grid_faces_are_fixed_and_spread():
    names = [f"{i}.jpg" for i in range(1, 339)]
    faces = E.default_grid_faces(names)
    assert faces == E.default_grid_faces(names) and len(faces) == 6
    assert faces[0] == "1.jpg" and faces[-1] == "338.jpg"
    assert E.default_grid_faces(names[:2]) == ["1.jpg", "2.jpg"]
