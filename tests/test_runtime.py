"""Runtime: torch-free import, verified loading, auto-selection cache, pre/post-processing,
batching, threads, bench. Uses the session's tiny_bundle (see conftest.py)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesketch.formats import DIRECTIONS

REPO = Path(__file__).resolve().parents[1]


def _subset(bundle: Path, dst: Path, formats: set[str]) -> Path:
    """A copy of ``bundle`` holding only ``formats`` (a smaller, still valid bundle)."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = [e for e in m["files"] if e["format"] in formats]
    dst.mkdir(parents=True)
    for e in m["files"]:
        for rel in [e["path"]] + [c["path"] for c in e["companions"]]:
            shutil.copy2(bundle / rel, dst / rel)
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    return dst


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FACESKETCH_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def ort_translator(tiny_bundle):
    from runtime import Translator
    return Translator.load(tiny_bundle, backend="ort-cpu")


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], axis=2)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- torch-free
def test_runtime_imports_and_runs_without_torch(tiny_bundle, tmp_path):
    code = (
        "import sys\n"
        "import runtime, runtime.bundle, runtime.backends, runtime.translator, runtime.select, "
        "runtime.bench, runtime.flops, runtime.trt\n"
        "from runtime import Translator, Translation, BundleError\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
        "sys.modules['torch'] = None  # from here on torch cannot be imported at all\n"
        "import numpy as np\n"
        f"t = Translator.load({str(tiny_bundle)!r}, backend='onnx')\n"
        "r = t.translate(np.full((50, 40, 3), 128, np.uint8), direction='photo2sketch')\n"
        "assert r.image.shape == (50, 40, 3) and r.backend.startswith('ort-')\n"
        "print('OK', r.backend)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**__import__("os").environ, "FACESKETCH_CACHE": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK ort-" in res.stdout


# ----------------------------------------------------------------- verification
def test_tampered_file_is_refused(tiny_bundle, tmp_path):
    from runtime import BundleError, Translator
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    data = bytearray((b / "photo2sketch.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "photo2sketch.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"photo2sketch\.onnx failed its integrity check: sha256"):
        Translator.load(b, backend="ort-cpu")
    # the other direction's file is intact: loading it alone works, using the bad one fails
    m = json.loads((b / "manifest.json").read_text())
    if any(e["format"] == "openvino" for e in m["files"]):
        (b / "sketch2photo.bin").write_bytes((b / "sketch2photo.bin").read_bytes()[:-4] + b"\0\0\0\0")
        t = Translator.load(b, backend="openvino-cpu")   # photo2sketch is loaded first
        with pytest.raises(BundleError, match=r"sketch2photo\.bin failed its integrity check"):
            t.run("sketch2photo", np.zeros((1, 3, 32, 32), np.float32))


def test_swapped_files_are_caught_by_their_own_metadata(tiny_bundle, tmp_path):
    """Even with re-hashed manifest entries, a file's embedded direction must match."""
    from runtime import BundleError, Translator
    from runtime.bundle import sha256_file
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx"})
    a, c = b / "photo2sketch.onnx", b / "sketch2photo.onnx"
    tmp = b / "x"
    a.rename(tmp), c.rename(a), tmp.rename(c)
    m = json.loads((b / "manifest.json").read_text())
    for e in m["files"]:
        e["sha256"] = sha256_file(b / e["path"])
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="says direction='sketch2photo' but the manifest says 'photo2sketch'"):
        Translator.load(b, backend="ort-cpu")


def test_manifest_paths_must_stay_inside_the_bundle(tiny_bundle, tmp_path):
    from runtime import BundleError, Translator
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx"})
    m = json.loads((b / "manifest.json").read_text())
    m["files"][0]["path"] = "../../etc/passwd"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle"):
        Translator.load(b, backend="ort-cpu")
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Translator.load(b)
    with pytest.raises(FileNotFoundError, match="facesketch export"):
        Translator.load(tmp_path / "nothing-here")


def _set(m: dict, dotted: str, value) -> None:
    """m["a"]["b"][0]["c"] = value for "a.b.0.c"; value DELETE removes the key."""
    *parents, last = dotted.split(".")
    for k in parents:
        m = m[int(k)] if isinstance(m, list) else m[k]
    if value is DELETE:
        del m[last]
    else:
        m[int(last) if isinstance(m, list) else last] = value


DELETE = object()
BAD_MANIFESTS = [   # (change, the field the error must name, its words)
    ("files", 5, "files: must be a non-empty list"),
    ("files", [], "files: must be a non-empty list"),
    ("directions", [], "directions: must be a non-empty list"),
    ("directions", ["photo2cartoon"], "directions: must be a non-empty list"),
    ("normalization", None, "normalization: must be an object"),
    ("normalization.std", [0.5, 0.0, 0.5], "normalization.std: must be 3 numbers > 0"),
    ("normalization.mean", [0.5, 0.5], "normalization.mean: must be a list of 3"),
    ("image_size", 100000, "image_size: must be an integer in 16..4096, got 100000"),
    ("image_size", "128", "image_size: must be an integer in 16..4096"),
    ("image_size", True, "image_size: must be an integer"),
    ("image_size", DELETE, "image_size: missing"),
    ("build.max_batch", 0, "build.max_batch: must be an integer in 1..1024"),
    ("build.max_batch", 10**6, "build.max_batch: must be an integer in 1..1024"),
    ("build", "fast", "build: must be an object"),
    ("version", "1", "version: must be an integer"),
    ("detector", [1, 2], "detector: must be an object or null"),
    ("source.arch", 3, "source.arch: must be an object or null"),
    ("files.0", "photo2sketch.onnx", "files[0]: must be an object"),
    ("files.0.sha256", "abc", "files[0].sha256: must be 64 lowercase hex digits"),
    ("files.0.path", DELETE, "files[0].path: missing"),
    ("files.0.path", 7, "files[0].path: must be a relative path"),
    ("files.0.direction", "up", "files[0].direction: must be photo2sketch or sketch2photo"),
    ("files.0.max_batch", 100000, "files[0].max_batch: must be an integer in 1..1024"),
    ("files.0.companions", 5, "files[0].companions: must be a list"),
    ("files.0.companions", [{"path": "x.bin"}], "files[0].companions[0].sha256: missing"),
    ("files.0.info", [], "files[0].info: must be an object"),
]


@pytest.mark.parametrize("field,value,message", BAD_MANIFESTS,
                         ids=[f"{f}={'DELETE' if v is DELETE else json.dumps(v)[:20]}"
                              for f, v, _ in BAD_MANIFESTS])
def test_bad_manifest_is_a_bundle_error_naming_the_field(tiny_bundle, tmp_path, field, value, message):
    from runtime import BundleError, Translator
    from runtime.bundle import Bundle, ManifestError
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    _set(m, field, value)
    b = tmp_path / "b"
    b.mkdir()
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as err:
        Bundle.load(b)
    assert message in str(err.value)
    assert len(err.value.problems) == 1, err.value.problems
    with pytest.raises(BundleError, match=re.escape(message)):
        Translator.load(b)


def test_every_manifest_problem_is_listed_in_one_error(tiny_bundle, tmp_path):
    from runtime.bundle import Bundle, ManifestError, manifest_problems
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest_problems(m) == []          # what `facesketch export` writes is valid
    m.update(image_size=100000, directions=[], normalization=None)
    m["files"][1]["sha256"] = None
    b = tmp_path / "b"
    b.mkdir()
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as err:
        Bundle.load(b)
    fields = [p.split(":")[0] for p in err.value.problems]
    assert fields == ["image_size", "normalization", "directions", "files[1].sha256"]
    assert "4 problems" in str(err.value)
    assert all(f"  - {p}" in str(err.value) for p in err.value.problems)


def test_damaged_engine_is_an_error_not_a_fallback(tiny_bundle, tmp_path, cache, caplog):
    """A candidate engine failing its sha256 (here the direction loaded second) stops
    the load, naming the file; allow_partial=True serves the intact engines instead."""
    from runtime import BundleError, Translator
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx", "onnx-int8"})
    data = bytearray((b / "sketch2photo.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "sketch2photo.onnx").write_bytes(bytes(data))
    for backend in ("auto", "onnx"):
        with pytest.raises(BundleError, match=r"sketch2photo\.onnx failed its integrity check.*"
                                              r"allow_partial=True \(--allow-partial\)"):
            Translator.load(b, backend=backend, device="cpu")
    with caplog.at_level(logging.WARNING, logger="facesketch.runtime"):
        t = Translator.load(b, device="cpu", allow_partial=True)
    assert t.backend == "ort-cpu-int8"
    sel = t.info()["selection"]
    assert set(sel["measured_ms"]) == {"ort-cpu-int8"}
    assert "sketch2photo.onnx failed its integrity check" in sel["skipped"]["ort-cpu"]
    assert any("allow_partial" in r.getMessage() and "sketch2photo.onnx" in r.getMessage()
               for r in caplog.records), caplog.text
    assert t.translate(_rgb(40, 30), direction="sketch2photo").image.shape == (40, 30, 3)
    # nothing intact left: still an error, never a silent success
    with pytest.raises(RuntimeError, match="no backend can run"):
        Translator.load(b, backend="onnx", device="cpu", allow_partial=True)


def test_cli_translate_allow_partial(tiny_bundle, tmp_path, capsys, cache):
    from app.cli import main
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx", "onnx-int8"})
    (b / "photo2sketch.onnx").write_bytes(b"\0" * 100)
    img = tmp_path / "in.png"
    Image.fromarray(_rgb(30, 20)).save(img)
    args = ["translate", str(img), "--model", str(b), "--direction", "photo2sketch", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "photo2sketch.onnx failed its integrity check" in capsys.readouterr().err
    assert main(args + ["--allow-partial"]) == 0
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------- backend choice
def test_auto_selection_is_cached_and_invalidated(tiny_bundle, tmp_path, cache):
    from runtime import Translator
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx", "onnx-int8"})
    t1 = Translator.load(b, device="cpu")
    s1 = t1.info()["selection"]
    assert not s1["cached"] and s1["rounds"] > 0
    assert set(s1["measured_ms"]) == {"ort-cpu", "ort-cpu-int8"}
    assert s1["backend"] == min(s1["measured_ms"], key=s1["measured_ms"].get) == t1.backend
    assert (cache / "autoselect.json").is_file()
    t2 = Translator.load(b, device="cpu")
    s2 = t2.info()["selection"]
    assert s2["cached"] and s2["rounds"] == 0 and s2["measured_ms"] == s1["measured_ms"]
    assert t2.backend == t1.backend
    # a changed bundle (new manifest -> new hash) is measured again
    m = json.loads((b / "manifest.json").read_text())
    m["created"] = "re-exported"
    (b / "manifest.json").write_text(json.dumps(m))
    s3 = Translator.load(b, device="cpu").info()["selection"]
    assert not s3["cached"] and s3["key"] != s1["key"]
    # an unreadable cache is measured again and rewritten, not a crash
    (cache / "autoselect.json").write_text("{broken")
    assert not Translator.load(b, device="cpu").info()["selection"]["cached"]
    assert json.loads((cache / "autoselect.json").read_text())


def test_backend_names_and_formats(tiny_bundle, cache):
    from runtime import Translator
    with pytest.raises(ValueError, match="unknown backend 'fastest'.*ort-cpu"):
        Translator.load(tiny_bundle, backend="fastest")
    with pytest.raises((RuntimeError, ValueError), match="tensorrt .*(not available here|lacks)"):
        Translator.load(tiny_bundle, backend="tensorrt")
    t = Translator.load(tiny_bundle, backend="onnx-int8", device="cpu")  # a format: auto among its backends
    assert t.backend == "ort-cpu-int8" and t.info()["format"] == "onnx-int8"
    with pytest.raises(ValueError, match="unknown device"):
        Translator.load(tiny_bundle, device="tpu")


# ----------------------------------------------------------------- pre/post-processing
def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "I;16"])
@pytest.mark.parametrize("hw", [(50, 40), (23, 71), (128, 9)])
def test_any_mode_and_size_comes_back_at_its_size(ort_translator, mode, hw):
    h, w = hw
    img = Image.fromarray(_rgb(h, w))
    img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
    data = _encode(img, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    r = ort_translator.translate(data, direction="photo2sketch")
    assert r.image.shape == (h, w, 3) and r.image.dtype == np.uint8
    assert r.direction == "photo2sketch" and r.domain == "photo" and r.confidence is None
    assert r.backend == "ort-cpu" and r.latency_ms > 0


def test_exif_orientation_is_applied(ort_translator):
    img = Image.fromarray(_rgb(30, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    r = ort_translator.translate(_encode(img, "JPEG", exif=exif), direction="sketch2photo")
    assert r.image.shape == (60, 30, 3)


def test_translate_is_fit_run_unfit(ort_translator):
    """translate() = fit into the square (aspect kept) -> the engine -> back to the input's
    size, with the same normalisation the export's parity check uses."""
    from facesketch.imageio import fit_square, unfit
    rgb = _rgb(40, 70, seed=3)
    sq, fit = fit_square(rgb, 32)
    assert (fit.inner_h, fit.inner_w) == (18, 32)  # aspect ratio kept inside the square
    x = (sq.transpose(2, 0, 1)[None].astype(np.float32) / 255.0 - 0.5) / 0.5
    y = ort_translator.run("photo2sketch", x)[0]
    want = unfit(np.clip((y * 0.5 + 0.5) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0), fit)
    got = ort_translator.translate(rgb, direction="photo2sketch").image
    assert got.shape == rgb.shape
    assert np.array_equal(got, want)


def test_bad_input_gets_a_clear_error(ort_translator):
    from facesketch.imageio import ImageError
    with pytest.raises(ImageError, match="empty"):
        ort_translator.translate(b"", direction="photo2sketch")
    with pytest.raises(ImageError, match="not an image"):
        ort_translator.translate(b"certainly not a png", direction="photo2sketch")
    with pytest.raises(ImageError, match="image 1"):
        ort_translator.translate_batch([_rgb(10, 10), b"junk"], direction="photo2sketch")
    with pytest.raises(ValueError, match="unknown direction 'up'"):
        ort_translator.translate(_rgb(10, 10), direction="up")
    with pytest.raises(ValueError, match="2 directions for 1 images"):
        ort_translator.translate_batch([_rgb(10, 10)], direction=["auto", "auto"])


def test_auto_direction_follows_the_detector(ort_translator, tiny_bundle):
    from runtime import detect_domain
    params = json.loads((tiny_bundle / "manifest.json").read_text())["detector"]
    from runtime.translator import DOMAIN_DIRECTION
    rgb = _rgb(50, 40)
    gray = np.repeat(np.full((50, 40, 1), 235, np.uint8), 3, axis=2)
    gray[10:40, 18:22] = 30
    for img in (rgb, gray):
        r = ort_translator.translate(img)
        domain, conf = detect_domain(img, params)
        assert r.domain == domain and r.direction == DOMAIN_DIRECTION[domain]
        assert r.confidence == pytest.approx(conf)


# ----------------------------------------------------------------- batching and threads
def test_translate_batch_makes_one_engine_call_per_direction(ort_translator):
    imgs = [_rgb(50, 40, s) for s in range(5)]
    dirs = ["photo2sketch", "sketch2photo", "photo2sketch", "sketch2photo", "photo2sketch"]
    before = ort_translator.engine_calls
    out = ort_translator.translate_batch(imgs, direction=dirs)
    assert ort_translator.engine_calls - before == 2
    assert [o.direction for o in out] == dirs
    for img, d, o in zip(imgs, dirs, out):
        single = ort_translator.translate(img, direction=d).image
        assert np.abs(single.astype(int) - o.image).max() <= 1


def test_concurrent_calls_are_safe(ort_translator):
    imgs = [_rgb(50, 40, s) for s in range(8)]
    want = [ort_translator.translate(i, direction="photo2sketch").image for i in imgs]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                got[k] = ort_translator.translate(imgs[k], direction="photo2sketch").image
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(imgs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for k in range(len(imgs)):
        assert np.array_equal(got[k], want[k])


def test_checkpoint_runs_on_torch_and_matches_the_bundle(tiny_checkpoint, ort_translator):
    pytest.importorskip("torch")
    from runtime import Translator
    t = Translator.load(tiny_checkpoint, backend="torch-cpu")
    assert t.backend == "torch-cpu" and t.info()["kind"] == "checkpoint"
    rgb = _rgb(50, 40, 7)
    for d in DIRECTIONS:
        a = t.translate(rgb, direction=d).image.astype(int)
        b = ort_translator.translate(rgb, direction=d).image
        assert np.abs(a - b).max() <= 1
    with pytest.raises(ValueError, match="lacks"):
        Translator.load(tiny_checkpoint, backend="ort-cpu")


# ----------------------------------------------------------------- flops, bench, cli
def test_flops_match_the_onnx_graph(tiny_bundle):
    pytest.importorskip("onnx")
    from runtime.flops import generator_flops, onnx_conv_flops
    arch = {"blocks": 1, "ngf": 8}
    for size in (32, 36, 64):
        assert generator_flops(arch, size) == onnx_conv_flops(str(tiny_bundle / "photo2sketch.onnx"), size)
    assert generator_flops({"blocks": 3, "ngf": 64}, 128) == 10_280_239_104


def test_flops_of_the_resize_arch_match_its_onnx_graph(tiny_bundles):
    pytest.importorskip("onnx")
    from runtime.flops import generator_flops, onnx_conv_flops
    arch = {"blocks": 1, "ngf": 8, "upsample": "resize"}
    onnx_file = str(tiny_bundles("resize") / "photo2sketch.onnx")
    for size in (32, 64):
        assert generator_flops(arch, size) == onnx_conv_flops(onnx_file, size)
    # resize-conv's upsampling convs run at the output resolution: 4x the transpose's MACs
    assert generator_flops(arch, 64) > generator_flops({"blocks": 1, "ngf": 8}, 64)


@pytest.mark.slow
def test_bench_reports_every_backend_and_the_auto_pick(tiny_bundle, tmp_path, cache):
    from runtime.bench import run_bench
    b = _subset(tiny_bundle, tmp_path / "b", {"onnx", "onnx-int8", "openvino"})
    lines: list[str] = []
    res = run_bench(b, batch_sizes=[1, 2], runs=3, json_out=tmp_path / "r.json", device="cpu",
                    echo=lines.append)
    names = {r["backend"] for r in res["backends"]}
    assert names >= {"ort-cpu", "ort-cpu-int8"}
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["machine"]["cpu"] and saved["matmul_peak_gflops"] > 0
    assert saved["model"]["flops_per_image"] == 2 * 4_767_744
    for r in saved["backends"]:
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and set(r["throughput_img_s"]) == {"1", "2"}
        assert 0 < r["peak_share_best"] and r["parity_psnr_db"] >= 30
    assert saved["targets"]["auto_pick"] in names
    assert any("auto picks" in line for line in lines)


def test_cli_translate_and_bench_defaults(tiny_bundle, synthetic_data, tmp_path, monkeypatch, capsys, cache):
    from app.cli import main
    src = synthetic_data / "trainA" / "00.png"
    rc = main(["translate", str(src), "--model", str(tiny_bundle), "--backend", "ort-cpu",
               "--direction", "photo2sketch", "--out", str(tmp_path / "out")])
    assert rc == 0
    out = tmp_path / "out" / "00.photo2sketch.png"
    assert Image.open(out).size == Image.open(src).size
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 2
    assert "facesketch export" in capsys.readouterr().err


# ----------------------------------------------------------------- GPU backends (GPU machines)
GPU_FLOOR = {"fp32": 60.0, "fp16": 40.0, "bf16": 30.0}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-cuda-fp16", "ort-trt", "torch-cuda", "torch-cuda-fp16",
                                  "torch-cuda-bf16", "torch-cuda-graph", "torch-cuda-compile"])
def test_gpu_backend_runs_within_its_precision_floor(name, tiny_bundle, tiny_checkpoint, cache):
    """Each CUDA backend on the tiny bundle, against PyTorch fp32 on the CPU; skips with
    the backend's own reason where CUDA (or its package) is absent."""
    from runtime import Translator
    from runtime import backends as B
    spec = B.BACKENDS[name]
    ok, why = spec.available()
    if not ok:
        pytest.skip(f"{name}: {why}")
    torch = pytest.importorskip("torch")
    from training.checkpoint import load_model
    t = Translator.load(tiny_bundle, backend=name)
    nets, _ = load_model(tiny_checkpoint)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    for d in DIRECTIONS:
        with torch.inference_mode():
            ref = nets["G_A" if d == "photo2sketch" else "G_B"](torch.from_numpy(x)).numpy()
        y = t.run(d, x)
        y1 = t.run(d, x[:1])  # a second shape (CUDA graphs: one graph per shape)
        mse = float(np.mean((y.astype(np.float64) - ref) ** 2))
        assert 10 * np.log10(4.0 / max(mse, 1e-30)) >= GPU_FLOOR[spec.precision], name
        assert np.allclose(y1[0], y[0], atol=0.05)
    t.close()


def test_gray_postprocess_makes_a_directions_outputs_grayscale(tiny_checkpoint, synthetic_data,
                                                               tmp_path):
    """A model whose config asks for gray photo2sketch outputs (pencil sketches) gets
    R = G = B there, from a checkpoint and from its exported bundle; the other direction
    keeps its colour; a bad value in a manifest is a schema error."""
    pytest.importorskip("torch")
    from export import export_bundle
    from runtime import Translator
    from runtime.bundle import manifest_problems
    from training.checkpoint import load_model, save_model
    nets, cfg = load_model(tiny_checkpoint)
    ck = save_model(tmp_path / "ck", nets["G_A"], nets["G_B"],
                    dict(cfg, postprocess={"photo2sketch": "gray"}))
    bundle = export_bundle(ck, tmp_path / "b", formats="onnx", calibration=synthetic_data)
    rgb = _rgb(40, 30)
    for t in (Translator.load(ck, backend="torch"), Translator.load(bundle, backend="ort-cpu")):
        out = t.translate(rgb, "photo2sketch").image
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        back = t.translate(rgb, "sketch2photo").image
        assert not (back[..., 0] == back[..., 2]).all()
        t.close()
    problems = manifest_problems({"postprocess": {"photo2sketch": "sepia"}, "image_size": 32,
                                  "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
                                  "directions": ["photo2sketch"], "files": []})
    assert any(p.startswith("postprocess") for p in problems)
