"""Triton: the model repository `facesketch export --formats triton` writes, and the runtime backend.

The repository test parses every config.pbtxt with Triton's own protobuf schema
(tritonclient's model_config_pb2) and checks it against the ONNX files. The
server tests need a running tritonserver named by FACESKETCH_TRITON_URL
(HOST:PORT of its HTTP endpoint, started with --model-control-mode=explicit so
the test can load its own tiny models); they skip, saying so, where none is
reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("torch")

from facesketch.formats import DIRECTIONS, FORMATS  # noqa: E402

TRITON_URL = os.environ.get("FACESKETCH_TRITON_URL")


@pytest.fixture(scope="module")
def triton_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A bundle (onnx + triton) of the tiny checkpoint, calibrated on a folder of random images."""
    from export import export_bundle
    root = tmp_path_factory.mktemp("triton")
    cal = root / "calibration"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(cal / f"{i}.png")
    return export_bundle(tiny_checkpoint, root / "bundle", formats="onnx,triton", calibration=cal,
                         max_batch=4, parity_images=2)


def _onnx_io(path: Path):
    import onnx
    m = onnx.load(str(path))
    weights = {t.name for t in m.graph.initializer}

    def desc(vi):
        tt = vi.type.tensor_type
        return vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    return ([desc(v) for v in m.graph.input if v.name not in weights], [desc(v) for v in m.graph.output],
            {p.key: p.value for p in m.metadata_props})


def test_repository_configs_parse_with_tritons_schema_and_match_the_onnx(triton_bundle):
    from google.protobuf import text_format
    from onnx import TensorProto
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
    mc = pb.ModelConfig
    onnx_to_triton = {TensorProto.FLOAT: pb.TYPE_FP32, TensorProto.FLOAT16: pb.TYPE_FP16}
    manifest = json.loads((triton_bundle / "manifest.json").read_text())
    size = manifest["image_size"]
    repo = triton_bundle / "triton"
    assert (repo / "README.md").is_file()
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme and "nvcr.io/nvidia/tritonserver:" in readme

    configs = sorted(repo.glob("*/config.pbtxt"))
    assert {c.parent.name for c in configs} >= set(DIRECTIONS)
    for cfg_path in configs:  # EVERY config
        model_dir = cfg_path.parent
        cfg = text_format.Parse(cfg_path.read_text(), mc())
        assert cfg.name == model_dir.name
        plan = cfg.platform == "tensorrt_plan"
        # the layout Triton expects: <model>/<version>/model.onnx (or model.plan)
        versions = [p for p in model_dir.iterdir() if p.is_dir()]
        assert versions and all(v.name.isdigit() for v in versions)
        model_file = versions[0] / ("model.plan" if plan else "model.onnx")
        assert model_file.is_file()
        if plan:  # only where a TensorRT engine was built (not on this CPU machine)
            onnx_file = repo / model_dir.name.removesuffix("_trt") / versions[0].name / "model.onnx"
        else:
            assert cfg.backend == "onnxruntime"
            onnx_file = model_file
            accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
            assert [a.name for a in accel] == ["tensorrt"]
            assert accel[0].parameters["precision_mode"] == "FP16"
        inputs, outputs, meta = _onnx_io(onnx_file)
        # batching: the ONNX batch axis is dynamic -> Triton's implicit batch dimension
        assert cfg.max_batch_size == manifest["build"]["max_batch"] >= 1
        for got, want in ((cfg.input, inputs), (cfg.output, outputs)):
            assert [t.name for t in got] == [w[0] for w in want]
            for t, (name, elem, dims) in zip(got, want):
                assert t.data_type == onnx_to_triton[elem], name
                assert dims[0] == -1  # batch
                assert len(t.dims) == len(dims) - 1
                for c, o in zip(t.dims, dims[1:]):  # fixed dims equal; dynamic H, W pinned to S
                    assert c == o or (o == -1 and c == size), (name, list(t.dims), dims)
        assert cfg.HasField("dynamic_batching")
        assert cfg.instance_group and cfg.instance_group[0].count >= 1
        assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        warm = {w.batch_size for w in cfg.model_warmup}
        assert warm == {1, cfg.max_batch_size}
        for w in cfg.model_warmup:
            assert set(w.inputs) == {t.name for t in cfg.input}
            for t in cfg.input:
                assert list(w.inputs[t.name].dims) == list(t.dims) and w.inputs[t.name].zero_data
        # the metadata travels as model parameters, the same as in the ONNX
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        for key in ("direction", "image_size", "normalization", "source_sha256"):
            assert params[f"facesketch.{key}"] == meta[f"facesketch.{key}"]
        assert params["facesketch.direction"] == model_dir.name.removesuffix("_trt")
        assert params["facesketch.engine"] == ("tensorrt_plan" if plan else "onnx")
        assert int(params["facesketch.image_size"]) == size
        assert params["facesketch.source_sha256"] == manifest["source"]["checkpoint_sha256"]

    # the manifest lists one triton entry per direction; its descriptor hashes every file
    from runtime.bundle import sha256_file
    entries = [e for e in manifest["files"] if e["format"] == "triton"]
    assert sorted(e["direction"] for e in entries) == sorted(DIRECTIONS)
    for e in entries:
        assert e["parity"]["passed"] and e["parity"]["backend"] == "triton-repo-cpu"
        desc = json.loads((triton_bundle / e["path"]).read_text())
        for rel, sha in desc["files"].items():
            assert sha256_file(triton_bundle / rel) == sha


def test_exporters_validate_accepts_the_repository_and_rejects_a_broken_config(triton_bundle, tmp_path):
    import shutil

    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
    from export.triton import TritonExportError, validate
    parsed = validate(triton_bundle / "triton")
    assert set(parsed) >= set(DIRECTIONS)
    broken = tmp_path / "repo"
    shutil.copytree(triton_bundle / "triton", broken)
    cfg = broken / DIRECTIONS[0] / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size", "max_batch"))
    with pytest.raises(TritonExportError, match="does not parse with Triton's schema"):
        validate(broken)
    (broken / DIRECTIONS[0] / "config.pbtxt").write_text((triton_bundle / "triton" / DIRECTIONS[0] /
                                                          "config.pbtxt").read_text())
    (broken / DIRECTIONS[0] / "1" / "model.onnx").unlink()
    with pytest.raises(TritonExportError, match="expected <version>/model.onnx"):
        validate(broken)


def test_triton_is_a_format_and_a_backend():
    from runtime import backends as B
    assert "triton" in FORMATS
    assert B.BACKENDS["triton"].format == "triton"
    spec, why = B.verifier("triton")
    assert spec is not None and spec.name == "triton-repo-cpu", why


def test_no_reachable_server_is_a_clear_error(triton_bundle, monkeypatch):
    from runtime import Translator
    from runtime.triton import server_status
    monkeypatch.delenv("FACESKETCH_TRITON_URL", raising=False)
    ok, why = server_status(None)
    assert not ok and "--server" in why
    with pytest.raises(ValueError, match="needs a server"):
        Translator.load(triton_bundle, backend="triton")
    with pytest.raises(RuntimeError, match="no Triton server reachable at 127.0.0.1:9"):
        Translator.load(triton_bundle, backend="triton", server="127.0.0.1:9")


# ----------------------------------------------------------------- against a real server
def _server_or_skip() -> str:
    from runtime.triton import server_status
    ok, why = server_status(TRITON_URL)
    if not ok:
        pytest.skip(f"no Triton server: {why}. Start one (docker run ... tritonserver "
                    "--model-repository=/models --model-control-mode=explicit) and set "
                    "FACESKETCH_TRITON_URL=HOST:8000")
    return TRITON_URL


@pytest.fixture()
def served(triton_bundle):
    """The tiny bundle's models loaded into the server (KIND_CPU configs: any server runs them)."""
    from google.protobuf import json_format, text_format

    from export.triton import TritonOptions, write_model
    from runtime.triton import client
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
    url = _server_or_skip()
    c = client(url)
    names = []
    try:
        for d in DIRECTIONS:
            repo = triton_bundle.parent / "cpu-repo"
            onnx_file = triton_bundle / "triton" / d / "1" / "model.onnx"
            cfg_path = write_model(repo, d, onnx_file, image_size=32,
                                   options=TritonOptions(max_batch_size=4, kind="cpu"))[d]
            cfg = text_format.Parse(cfg_path.read_text(), pb.ModelConfig())
            config_json = json_format.MessageToJson(cfg, preserving_proto_field_name=True)
            try:
                c.load_model(d, config=config_json, files={"file:1/model.onnx": onnx_file.read_bytes()})
            except Exception as exc:  # e.g. the server is not in explicit model-control mode
                pytest.skip(f"the Triton server at {url} would not load the test models: {exc}")
            names.append(d)
        yield url
    finally:
        for n in names:
            c.unload_model(n)
        c.close()


def test_translator_on_triton_matches_onnxruntime(served, triton_bundle):
    from runtime import Translator
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (50, 40, 3), dtype=np.uint8) for _ in range(6)]
    local = Translator.load(triton_bundle, backend="ort-cpu")
    remote = Translator.load(triton_bundle, backend="triton", server=served)
    assert remote.backend == "triton" and remote.info()["model"]["triton"]["server"] == served
    x = rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    for d in DIRECTIONS:
        a, b = local.run(d, x), remote.run(d, x)
        assert b.shape == a.shape == (6, 3, 32, 32)  # 6 > max_batch 4: split into two requests
        assert float(np.abs(a - b).max()) < 1e-4
    outs = remote.translate_batch(images, direction="photo2sketch")
    assert [o.image.shape for o in outs] == [i.shape for i in images]


@pytest.mark.gpu
@pytest.mark.slow
def test_tensorrt_plan_model_where_an_engine_was_built(tiny_checkpoint, tmp_path):
    """On a GPU machine with TensorRT: the bundle's engine goes in as <dir>_trt/1/model.plan."""
    pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt) and an NVIDIA GPU")
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
    from export import export_bundle
    from export.triton import validate
    from runtime.backends import nvidia_gpu_present
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA GPU visible")
    cal = tmp_path / "calibration"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(cal / f"{i}.png")
    bundle = export_bundle(tiny_checkpoint, tmp_path / "bundle", formats="onnx,tensorrt,triton",
                           calibration=cal, max_batch=4, parity_images=2)
    parsed = validate(bundle / "triton")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for d in DIRECTIONS:
        cfg = parsed[d + "_trt"]
        assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
        assert [t.name for t in cfg.input] == [t.name for t in parsed[d].input]
        assert list(cfg.input[0].dims) == list(parsed[d].input[0].dims)
        engine = next(e for e in manifest["files"] if e["format"] == "tensorrt" and e["direction"] == d)
        assert (bundle / "triton" / f"{d}_trt" / "1" / "model.plan").read_bytes() == \
            (bundle / engine["path"]).read_bytes()
        assert cfg.parameters["facesketch.tensorrt_version"].string_value == engine["info"]["tensorrt_version"]
