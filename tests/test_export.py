"""Export: every format through export -> load -> run -> parity, the manifest, refusals.

The bundle under test is the session's ``tiny_bundle`` (tiny random generators,
size 32, exported with --formats all and calibrated on real image files).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from facesketch import formats as F  # noqa: E402
from facesketch.formats import DIRECTIONS, FORMATS, SOURCE_DOMAIN  # noqa: E402


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _inputs(folder: Path, domain: str, size: int = 32) -> np.ndarray:
    """The real image files of a domain, fitted and normalised as the runtime does."""
    from facesketch.imageio import decode, fit_square, list_images
    sub = "trainA" if domain == "photo" else "trainB"
    sq = np.stack([fit_square(decode(p), size)[0] for p in list_images(folder / sub)[:6]])
    return np.ascontiguousarray(sq.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


def _torch_reference(checkpoint: Path, direction: str, x: np.ndarray) -> np.ndarray:
    import torch
    from training.checkpoint import load_model
    nets, _ = load_model(checkpoint)
    with torch.inference_mode():
        return nets[F.DIRECTION_GENERATOR[direction]](torch.from_numpy(x)).numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


FORMAT_PARAMS = [pytest.param(n, marks=pytest.mark.gpu) if n == "tensorrt" else n for n in FORMATS]


# ----------------------------------------------------------------- the one check per format
@pytest.mark.parametrize("arch", ["reference", "resize", "bicubic"])
@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_format_export_load_run_parity(fmt, arch, tiny_bundles, tiny_checkpoints, synthetic_data):
    """Every format of the table, for every generator arch: exported (or skipped with its
    reason), loaded by every backend that runs it here, run on real images, and within
    its parity floor."""
    from runtime import Translator
    from runtime import backends as B
    from training.networks import ARCHS
    assert set(ARCHS) == {"reference", "resize", "bicubic"}  # a new arch joins the parametrization
    tiny_bundle, tiny_checkpoint = tiny_bundles(arch), tiny_checkpoints[arch]
    assert _manifest(tiny_bundle)["source"]["arch"]["upsample"] == ARCHS[arch]
    m = _manifest(tiny_bundle)
    if fmt in m["skipped"]:
        pytest.skip(f"{fmt} skipped at export: {m['skipped'][fmt]}")
    assert fmt not in m["refused"], m["refused"].get(fmt)
    entries = {e["direction"]: e for e in m["files"] if e["format"] == fmt}
    assert set(entries) == set(DIRECTIONS)
    specs, reasons = [], []
    for spec in B.for_format(fmt):
        ok, why = spec.available()
        if ok and spec.device in ("cpu", "cuda"):
            specs.append(spec)
        else:
            reasons.append(f"{spec.name}: {why or 'remote only'}")
    if not specs:
        pytest.skip(f"no backend runs {fmt} here ({'; '.join(reasons)})")
    floor = FORMATS[fmt].floor_db
    for spec in specs:
        if spec.device == "cuda":
            try:
                t = Translator.load(tiny_bundle, backend=spec.name)
            except RuntimeError as exc:
                pytest.skip(f"{spec.name}: {exc}")
        else:
            t = Translator.load(tiny_bundle, backend=spec.name)
        assert t.backend == spec.name
        for direction in DIRECTIONS:
            x = _inputs(synthetic_data, SOURCE_DOMAIN[direction])
            y = t.run(direction, x)
            assert y.shape == x.shape and y.dtype == np.float32
            assert _psnr(y, _torch_reference(tiny_checkpoint, direction, x)) >= floor, spec.name
            par = entries[direction]["parity"]
            assert par["passed"] and par["psnr_db"] >= floor and par["floor_db"] == floor
            assert par["images"] >= 1 and par["reference"] == "PyTorch fp32 CPU"
        t.close()


# ----------------------------------------------------------------- manifest
def test_manifest_records_what_the_runtime_needs(tiny_bundle, tiny_checkpoint):
    from runtime.bundle import sha256_file
    from training.checkpoint import read_config
    m = _manifest(tiny_bundle)
    cfg = read_config(tiny_checkpoint)
    assert m["format"] == "facesketch-bundle" and m["version"] == 1
    assert m["image_size"] == 32 and m["normalization"] == cfg["normalization"]
    assert m["directions"]["photo2sketch"] == {"domain_in": "photo", "domain_out": "sketch", "generator": "G_A"}
    assert m["source"]["checkpoint_sha256"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert m["source"]["weights_sha256"] == cfg["weights_sha256"]
    assert m["source"]["arch"]["blocks"] == 1 and m["source"]["arch"]["ngf"] == 8
    assert "onnxruntime" in m["build"]["libraries"] and m["build"]["max_batch"] == 32
    assert m["build"]["device"] and m["build"]["machine"]["cpu"]
    assert set(m["calibration"]) >= {"source", "photo", "sketch"}
    assert len(m["calibration"]["photo"]["parity_images"]) >= 1
    for name, why in m["skipped"].items():
        assert name in FORMATS and isinstance(why, str) and why and "\n" not in why
    assert "onnx" in {e["format"] for e in m["files"]}
    for e in m["files"]:
        assert sha256_file(tiny_bundle / e["path"]) == e["sha256"]
        assert (tiny_bundle / e["path"]).stat().st_size == e["bytes"]
        for c in e["companions"]:
            assert sha256_file(tiny_bundle / c["path"]) == c["sha256"] and c["role"]
        assert e["precision"] == FORMATS[e["format"]].precision
        assert e["inputs"] and e["outputs"] and e["normalization"] == m["normalization"]
        assert e["domain_in"] == SOURCE_DOMAIN[e["direction"]]
        assert e["parity"]["max_abs_err"] >= 0 and "psnr_db" in e["parity"]
        assert e["export_seconds"] >= 0


def test_onnx_files_carry_metadata_and_dynamic_axes(tiny_bundle):
    import onnx
    import onnxruntime as ort
    m = _manifest(tiny_bundle)
    for e in m["files"]:
        if not e["path"].endswith(".onnx"):
            continue
        model = onnx.load(str(tiny_bundle / e["path"]))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["facesketch.direction"] == e["direction"]
        assert meta["facesketch.format"] == e["format"]
        assert meta["facesketch.domain_in"] == e["domain_in"]
        assert meta["facesketch.image_size"] == "32"
        assert json.loads(meta["facesketch.normalization"]) == m["normalization"]
        assert meta["facesketch.source_sha256"] == m["source"]["checkpoint_sha256"]
        assert [i.name for i in model.graph.input] == [i["name"] for i in e["inputs"]]
        assert e["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
        assert e["dynamic_axes"][e["inputs"][0]["name"]] == {"0": "batch", "2": "height", "3": "width"}
    # dynamic batch and spatial size really work
    sess = ort.InferenceSession(str(tiny_bundle / "photo2sketch.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.zeros((3, 3, 48, 40), np.float32)})[0]
    assert y.shape == (3, 3, 48, 40)
    onnx.checker.check_model(str(tiny_bundle / "photo2sketch.onnx"), full_check=True)
    assert max(o.version for o in onnx.load(str(tiny_bundle / "photo2sketch.onnx")).opset_import
               if o.domain in ("", "ai.onnx")) >= 17
    # The supported exporter ran: the TorchScript one is only a fallback, and a
    # clean install that silently lacks onnxscript would fall back without this.
    onnx_entry = next(e for e in m["files"] if e["format"] == "onnx")
    assert onnx_entry["info"]["exporter"] == "dynamo", onnx_entry["info"]


def test_fp16_graph_keeps_norms_and_output_in_fp32(tiny_bundle):
    import onnx
    from onnx import TensorProto
    if not (tiny_bundle / "photo2sketch.fp16.onnx").is_file():
        pytest.skip("onnx-fp16 not in the bundle")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_bundle / "photo2sketch.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    ops = [n.op_type for n in model.graph.node]
    assert "Cast" in ops
    for n in model.graph.node:
        if n.op_type in ("InstanceNormalization", "Tanh"):
            assert all(types[i] == TensorProto.FLOAT for i in n.input if i), n.name
        if n.op_type in ("Conv", "ConvTranspose"):
            assert types[n.input[1]] == TensorProto.FLOAT16, n.name
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_int8_graph_is_qdq_with_fp32_edges(tiny_bundle):
    import onnx
    if not (tiny_bundle / "photo2sketch.int8.onnx").is_file():
        pytest.skip("onnx-int8 not in the bundle")
    model = onnx.load(str(tiny_bundle / "photo2sketch.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 1
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized = [producers.get(c.input[1]) == "DequantizeLinear" for c in convs]
    assert quantized[0] is False and quantized[-1] is False and any(quantized[1:-1])


# ----------------------------------------------------------------- refusals and errors
def _torch_only_floor(monkeypatch, floor: float) -> None:
    table = {"torch": dataclasses.replace(FORMATS["torch"], floor_db=floor)}
    monkeypatch.setattr(F, "FORMATS", table)


@pytest.mark.slow
def test_format_below_its_floor_is_refused(tiny_checkpoint, synthetic_data, tmp_path, monkeypatch):
    from export import ExportError, ParityError, export_bundle
    # torch files are bit-identical to the reference (reported as 200 dB): a 250 dB floor refuses them
    _torch_only_floor(monkeypatch, 250.0)
    out = tmp_path / "b"
    with pytest.raises(ParityError, match=r"parity PSNR 200\.00 dB .* below the torch floor of 250\.0 dB"):
        export_bundle(tiny_checkpoint, out, formats="torch", calibration=synthetic_data)
    assert not out.exists() and not list(tmp_path.glob(".b.tmp*"))
    # with "all", a refused format is left out; nothing left -> a clear error naming why
    with pytest.raises(ExportError, match="no format could be exported: torch: .*250.0 dB"):
        export_bundle(tiny_checkpoint, out, formats="all", calibration=synthetic_data)


def test_calibration_images_are_required_and_found(tiny_checkpoint, synthetic_data, tmp_path):
    from export import ExportError, export_bundle
    from training.checkpoint import load_model, model_config, save_model
    with pytest.raises(ExportError, match="no real images .* --calibration DIR"):
        export_bundle(tiny_checkpoint, tmp_path / "none", formats="torch")
    # a checkpoint that records its training folders needs no --calibration; a run
    # folder with best/ exports best/
    nets, _ = load_model(tiny_checkpoint)
    run = tmp_path / "run"
    data = {"photos": str(synthetic_data / "trainA"), "sketches": str(synthetic_data / "trainB")}
    save_model(run / "best", nets["G_A"], nets["G_B"], model_config(1, 8, 32, data=data))
    save_model(run, nets["G_A"], nets["G_B"], model_config(1, 8, 32))
    out = export_bundle(run, tmp_path / "b", formats="torch")
    m = _manifest(out)
    assert m["source"]["checkpoint"].endswith("best/model.safetensors")
    assert "training data" in m["calibration"]["source"]
    # a recorded folder that does not exist here is named in the error
    data_missing = {"photos": "/nonexistent/photos", "sketches": "/nonexistent/sketches"}
    save_model(tmp_path / "moved", nets["G_A"], nets["G_B"], model_config(1, 8, 32, data=data_missing))
    with pytest.raises(ExportError, match="/nonexistent/photos.* do not exist here"):
        export_bundle(tmp_path / "moved", tmp_path / "c", formats="torch")


def test_export_refuses_bad_arguments(tiny_checkpoint, synthetic_data, tmp_path):
    from export import ExportError, export_bundle
    with pytest.raises(KeyError, match="unknown format 'onx'"):
        export_bundle(tiny_checkpoint, tmp_path / "b", formats="onx", calibration=synthetic_data)
    with pytest.raises(ExportError, match="multiple of 4"):
        export_bundle(tiny_checkpoint, tmp_path / "b", formats="torch", size=30, calibration=synthetic_data)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle; refusing to overwrite"):
        export_bundle(tiny_checkpoint, tmp_path / "busy", formats="torch", calibration=synthetic_data)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_missing_package_is_skipped_with_a_reason(tiny_checkpoint, synthetic_data, tmp_path, monkeypatch):
    """A format whose package is absent is recorded as skipped, never a crash."""
    from export import export_bundle
    table = {"torch": FORMATS["torch"],
             "openvino": dataclasses.replace(FORMATS["openvino"], packages=("no_such_package_xyz",))}
    monkeypatch.setattr(F, "FORMATS", table)
    out = export_bundle(tiny_checkpoint, tmp_path / "b", formats="all", calibration=synthetic_data)
    m = _manifest(out)
    assert m["skipped"] == {"openvino": "needs the Python package(s) no_such_package_xyz, not installed here"}
    assert {e["format"] for e in m["files"]} == {"torch"}


@pytest.mark.slow
def test_reexport_replaces_a_bundle(tiny_checkpoint, synthetic_data, tmp_path):
    from export import export_bundle
    out = export_bundle(tiny_checkpoint, tmp_path / "b", formats="torch", calibration=synthetic_data)
    first = _manifest(out)["created"]
    (out / "stale.txt").write_text("x")
    export_bundle(tiny_checkpoint, out, formats="torch", calibration=synthetic_data)
    assert not (out / "stale.txt").exists() and _manifest(out)["created"] >= first


def test_cli_export_lists_formats_and_writes_a_bundle(tiny_checkpoint, synthetic_data, tmp_path, capsys):
    from app.cli import build_parser, main
    helptext = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for name in FORMATS:
        assert name in helptext
    rc = main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--formats", "torch",
               "--calibration", str(synthetic_data)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "torch" in out and "photo2sketch" in out and (tmp_path / "b" / "manifest.json").is_file()
    rc = main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "c"), "--formats", "nope"])
    assert rc == 2


# ----------------------------------------------------------------- TensorRT (GPU machines)
@pytest.mark.gpu
def test_tensorrt_engine_for_another_gpu_is_rebuilt(tiny_bundle, tmp_path, monkeypatch):
    """An engine whose manifest names another TensorRT version/GPU is rebuilt from the ONNX."""
    from runtime import Translator
    from runtime import backends as B
    ok, why = B.BACKENDS["tensorrt"].available()
    if not ok:
        pytest.skip(f"TensorRT backend unavailable: {why}")
    m = _manifest(tiny_bundle)
    if "tensorrt" in m["skipped"]:
        pytest.skip(f"tensorrt skipped at export: {m['skipped']['tensorrt']}")
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    for e in m["files"]:
        if e["format"] == "tensorrt":
            e["info"]["tensorrt_version"] = "0.0.0"
    (copy / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("FACESKETCH_CACHE", str(tmp_path / "cache"))
    t = Translator.load(copy, backend="tensorrt")
    y = t.run("photo2sketch", np.zeros((2, 3, 32, 32), np.float32))
    assert y.shape == (2, 3, 32, 32)
    assert list((tmp_path / "cache" / "tensorrt").glob("*.engine"))
