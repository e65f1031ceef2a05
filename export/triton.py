"""An NVIDIA Triton Inference Server model repository (``facesketch export --formats triton``).

Layout (what ``tritonserver --model-repository=DIR`` expects)::

    DIR/README.md                       how to start tritonserver on it
    DIR/photo2sketch/config.pbtxt       onnxruntime backend, TensorRT accelerator in FP16
    DIR/photo2sketch/1/model.onnx
    DIR/photo2sketch_trt/config.pbtxt   platform tensorrt_plan (only where a plan was built)
    DIR/photo2sketch_trt/1/model.plan
    DIR/sketch2photo/...                the same for the other direction

Every ``config.pbtxt`` takes its input/output names, data types and shapes
from the ONNX file itself (read with ``onnx``), never from assumptions: the
batch axis becomes Triton's implicit batch dimension (``max_batch_size``), and
the dynamic spatial axes are pinned to the model's image size (the runtime
always sends squares of that size; pinning lets TensorRT build for exactly that
shape, and Triton refuses other sizes with a clear error). Each config has
dynamic batching, an instance group and warm-up requests (batch 1 and the
maximum batch, so TensorRT builds its engines at load time, not on the first
user's request), and carries the facesketch metadata (direction, image size,
normalisation, source checkpoint sha256) as model parameters: the runtime's
Triton backend learns everything from the server, never from model names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("facesketch.export")

REPOSITORY_README = "README.md"
CONFIG = "config.pbtxt"
ONNX_FILE, PLAN_FILE = "model.onnx", "model.plan"
PLAN_SUFFIX = "_trt"
PARAM_PREFIX = "facesketch."

# ONNX TensorProto element type -> Triton data type (model_config.proto DataType).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}
# Triton data type -> the wire name tritonclient uses ("FP32", ...).
TRITON_TO_WIRE = {v: v.removeprefix("TYPE_").replace("STRING", "BYTES") for v in _ONNX_TO_TRITON.values()}


class TritonExportError(RuntimeError):
    """The model cannot be put into a Triton repository as asked; the message says why."""


@dataclass(frozen=True)
class Tensor:
    """One ONNX graph input or output: name, Triton data type, full dims (-1 = dynamic)."""
    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 8          # Triton's batch limit (dynamic batcher and clients)
    instances: int = 1               # model instances per GPU (or in all, on CPU)
    kind: str = "gpu"                # "gpu" (KIND_GPU) or "cpu" (KIND_CPU, no TensorRT)
    max_queue_delay_us: int = 500    # how long the dynamic batcher waits to fill a batch
    workspace_bytes: int = 1 << 30   # TensorRT builder workspace of the ORT accelerator
    version: int = 1                 # the model version folder

    def check(self) -> None:
        if self.max_batch_size < 1:
            raise TritonExportError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise TritonExportError(f"instances must be >= 1, got {self.instances}")
        if self.kind not in ("gpu", "cpu"):
            raise TritonExportError(f"kind must be gpu or cpu, got {self.kind!r}")
        if self.version < 1:
            raise TritonExportError(f"version must be >= 1, got {self.version}")


# ------------------------------------------------------------------ reading the ONNX
def read_onnx(path: str | os.PathLike) -> tuple[list[Tensor], list[Tensor], dict[str, str]]:
    """Inputs, outputs and metadata_props of an ONNX file (weights not loaded)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    weights = {t.name for t in g.initializer}

    def tensor(vi) -> Tensor:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise TritonExportError(f"{path}: {vi.name} is not a tensor; Triton needs tensors")
        dtype = _ONNX_TO_TRITON.get(tt.elem_type)
        if dtype is None:
            raise TritonExportError(f"{path}: {vi.name} has ONNX element type {tt.elem_type}, "
                                    "which Triton has no data type for")
        if not tt.HasField("shape"):
            raise TritonExportError(f"{path}: {vi.name} has no shape (rank unknown)")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in tt.shape.dim)
        return Tensor(vi.name, dtype, dims)

    inputs = [tensor(vi) for vi in g.input if vi.name not in weights]
    outputs = [tensor(vi) for vi in g.output]
    meta = {p.key: p.value for p in model.metadata_props}
    return inputs, outputs, meta


def config_dims(t: Tensor, image_size: int, batching: bool) -> list[int]:
    """Triton dims for an ONNX tensor: the batch axis dropped when batching, and the
    dynamic spatial axes of an N x C x H x W image tensor pinned to ``image_size``."""
    dims = list(t.dims)
    if len(dims) == 4:
        dims[2:] = [image_size if d == -1 else d for d in dims[2:]]
    return dims[1:] if batching else dims


def _batching(tensors: Iterable[Tensor]) -> bool:
    """Triton's implicit batch axis needs a leading dynamic axis on every input and output."""
    ts = list(tensors)
    return bool(ts) and all(len(t.dims) >= 1 and t.dims[0] == -1 for t in ts)


# ------------------------------------------------------------------ writing config.pbtxt
def _q(s: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(d: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in d) + " ]"


def _io_block(field: str, tensors: list[Tensor], image_size: int, batching: bool) -> list[str]:
    lines = [f"{field} ["]
    for i, t in enumerate(tensors):
        lines += ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}",
                  f"    dims: {_dims(config_dims(t, image_size, batching))}",
                  "  }" + ("," if i < len(tensors) - 1 else "")]
    return lines + ["]"]


def model_config(name: str, inputs: list[Tensor], outputs: list[Tensor], *, image_size: int,
                 options: TritonOptions, plan: bool = False, max_batch_size: int | None = None,
                 parameters: dict[str, str] | None = None, comment: str = "") -> str:
    """The config.pbtxt text of one model (ONNX on onnxruntime, or a TensorRT plan)."""
    batching = _batching(inputs + outputs)
    mbs = (max_batch_size or options.max_batch_size) if batching else 0
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines += [f"name: {_q(name)}"]
    lines += ['platform: "tensorrt_plan"'] if plan else ['backend: "onnxruntime"']
    lines += [f"max_batch_size: {mbs}"]
    lines += _io_block("input", inputs, image_size, batching)
    lines += _io_block("output", outputs, image_size, batching)
    kind = "KIND_GPU" if plan or options.kind == "gpu" else "KIND_CPU"
    lines += ["instance_group [", "  {", f"    count: {options.instances}", f"    kind: {kind}",
              "  }", "]"]
    if mbs:
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}"]
    if not plan and options.kind == "gpu":
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [",
                  "      {", '        name: "tensorrt"',
                  '        parameters { key: "precision_mode" value: "FP16" }',
                  f'        parameters {{ key: "max_workspace_size_bytes" value: "{options.workspace_bytes}" }}',
                  "      }", "    ]", "  }", "}"]
    # Warm-up: the largest batch first, then batch 1, so the TensorRT engines cover
    # batch 1..max before the first request (zeros are enough to build and time).
    sizes = sorted({mbs, 1}, reverse=True) if mbs else [0]
    lines += ["model_warmup ["]
    for i, bs in enumerate(sizes):
        lines += ["  {", f'    name: "batch_{max(bs, 1)}"', f"    batch_size: {max(bs, 1)}"]
        for t in inputs:
            lines += [f"    inputs {{ key: {_q(t.name)} value {{ data_type: {t.data_type} "
                      f"dims: {_dims(config_dims(t, image_size, batching))} zero_data: true }} }}"]
        lines += ["  }" + ("," if i < len(sizes) - 1 else "")]
    lines += ["]"]
    for key, value in (parameters or {}).items():
        lines += [f"parameters {{ key: {_q(key)} value {{ string_value: {_q(value)} }} }}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ one model
def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX into the version folder as one self-contained file."""
    import onnx
    model = onnx.load(str(src), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if external:  # Triton loads <version>/model.onnx: fold the weights into it
        onnx.save(onnx.load(str(src)), str(tmp))
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model(repo: str | os.PathLike, name: str, onnx_path: str | os.PathLike, *,
                image_size: int, options: TritonOptions | None = None,
                metadata: dict[str, str] | None = None, plan_path: str | os.PathLike | None = None,
                plan_max_batch: int | None = None, plan_info: dict[str, Any] | None = None,
                ) -> dict[str, Path]:
    """Write model ``name`` (ONNX on onnxruntime) and, with ``plan_path``, ``name_trt``.

    ``metadata`` (the facesketch.* ONNX metadata: direction, image_size, ...)
    becomes the models' parameters; by default it is read from the ONNX.
    Returns {model name: its config.pbtxt}.
    """
    options = options or TritonOptions()
    options.check()
    repo, onnx_path = Path(repo), Path(onnx_path)
    inputs, outputs, props = read_onnx(onnx_path)
    if not inputs or not outputs:
        raise TritonExportError(f"{onnx_path} has no inputs or no outputs")
    meta = dict(metadata) if metadata is not None else {
        k.removeprefix(PARAM_PREFIX): v for k, v in props.items() if k.startswith(PARAM_PREFIX)}
    params = {PARAM_PREFIX + k: str(v) for k, v in meta.items()}
    direction = meta.get("direction", name)
    written: dict[str, Path] = {}

    onnx_params = dict(params, **{PARAM_PREFIX + "engine": "onnx"})
    text = model_config(name, inputs, outputs, image_size=image_size, options=options,
                        parameters=onnx_params,
                        comment=f"facesketch {direction}: ONNX on the onnxruntime backend"
                                + (" with the TensorRT accelerator in FP16" if options.kind == "gpu" else ""))
    _copy_onnx(onnx_path, repo / name / str(options.version) / ONNX_FILE)
    _write_text(text, repo / name / CONFIG)
    written[name] = repo / name / CONFIG

    if plan_path is not None and options.kind == "gpu":
        tname = name + PLAN_SUFFIX
        mbs = min(options.max_batch_size, plan_max_batch or options.max_batch_size)
        info = plan_info or {}
        plan_params = dict(params, **{PARAM_PREFIX + "engine": "tensorrt_plan"},
                           **{PARAM_PREFIX + k: str(v) for k, v in info.items()
                              if k in ("tensorrt_version", "compute_capability", "gpu")})
        built = ", ".join(f"{k} {info[k]}" for k in ("tensorrt_version", "compute_capability", "gpu")
                          if k in info)
        text = model_config(tname, inputs, outputs, image_size=image_size, options=options,
                            plan=True, max_batch_size=mbs, parameters=plan_params,
                            comment=f"facesketch {direction}: TensorRT plan (FP16)"
                                    + (f", built with {built}" if built else "")
                                    + "\nA plan only loads on the TensorRT version and GPU "
                                      "architecture it was built for.")
        dst = repo / tname / str(options.version) / PLAN_FILE
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        shutil.copyfile(plan_path, tmp)
        os.replace(tmp, dst)
        _write_text(text, repo / tname / CONFIG)
        written[tname] = repo / tname / CONFIG
    return written


# ------------------------------------------------------------------ the repository README
def write_readme(repo: str | os.PathLike, options: TritonOptions | None = None) -> Path:
    """README.md of the repository: what is in it and how to serve it (lists its models)."""
    options = options or TritonOptions()
    repo = Path(repo)
    models = sorted(p.parent.name for p in repo.glob(f"*/{CONFIG}"))
    rows = []
    for m in models:
        text = (repo / m / CONFIG).read_text()
        kind = "TensorRT plan" if "tensorrt_plan" in text else "ONNX, onnxruntime" + (
            " + TensorRT FP16" if "gpu_execution_accelerator" in text else "")
        rows.append(f"| `{m}` | {kind} |")
    abs_repo = "$PWD"
    text = f"""# facesketch models for NVIDIA Triton Inference Server

A Triton model repository written by `facesketch export --formats triton`.

| model | engine |
| --- | --- |
{chr(10).join(rows)}

Each model takes `input` (float32, N x 3 x S x S, RGB scaled to [-1, 1]) and returns
`output` (same shape and range); names, types and shapes are in each `config.pbtxt`
(read from the ONNX file), and the facesketch metadata (direction, image size,
normalisation, source checkpoint) is in its `parameters`. Models batch dynamically up
to `max_batch_size` ({options.max_batch_size}) and warm up (TensorRT engines built) at load.

## Start the server

With Docker and the NVIDIA Container Toolkit, from the folder holding this README
(pick a release `<yy.mm>`, e.g. the newest listed on NGC for `nvcr.io/nvidia/tritonserver`):

```bash
docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v {abs_repo}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
  tritonserver --model-repository=/models
```

Ports: 8000 HTTP, 8001 gRPC, 8002 metrics. Check it is up:

```bash
curl -s localhost:8000/v2/health/ready && echo ready
curl -s localhost:8000/v2/models/photo2sketch/config
```

Then serve the web page in front of it (the bundle or checkpoint gives the
pre-processing and photo/sketch detector; the server does the work):

```bash
facesketch serve --model BUNDLE --backend triton --server localhost:8000
facesketch translate face.jpg --model BUNDLE --backend triton --server localhost:8000
```

## Notes

- The `*_trt` models are serialized TensorRT engines: they load only with the
  TensorRT version and GPU architecture they were built with (see the comment at the
  top of their `config.pbtxt`), so pick the tritonserver release whose TensorRT
  version matches (NVIDIA's Frameworks Support Matrix lists it). When they do not
  match, delete the `*_trt` folders: the ONNX models build their TensorRT engines
  on the server itself.
- On a server without a GPU: in each `config.pbtxt` change `kind: KIND_GPU` to
  `KIND_CPU` and delete the `optimization` block, and delete the `*_trt` folders
  (or export with the triton format's `kind` option set to `cpu`).
- Triton only loads folders holding a `config.pbtxt` and numbered version folders;
  this README is ignored by the server.
"""
    path = repo / REPOSITORY_README
    _write_text(text, path)
    return path


def write_repository(repo: str | os.PathLike, onnx: dict[str, str | os.PathLike], *, image_size: int,
                     options: TritonOptions | None = None,
                     plans: dict[str, tuple[str | os.PathLike, int | None, dict[str, Any]]] | None = None,
                     ) -> dict[str, Path]:
    """A whole repository: {direction: onnx path} (+ {direction: (plan, max batch, info)})."""
    written: dict[str, Path] = {}
    for direction, path in onnx.items():
        plan = (plans or {}).get(direction)
        written.update(write_model(repo, direction, path, image_size=image_size, options=options,
                                   plan_path=plan[0] if plan else None,
                                   plan_max_batch=plan[1] if plan else None,
                                   plan_info=plan[2] if plan else None))
    write_readme(repo, options)
    return written


# ------------------------------------------------------------------ checking
def schema_available() -> bool:
    """Is Triton's model_config schema importable (tritonclient with its grpc extra)?"""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("tritonclient", "grpc", "google.protobuf"))


def validate(repo: str | os.PathLike) -> dict[str, Any]:
    """Parse every config.pbtxt with Triton's own schema (tritonclient's model_config_pb2)
    and check its layout; returns {model name: parsed ModelConfig}. Raises TritonExportError."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:  # tritonclient raises RuntimeError without grpc
        raise TritonExportError(f"cannot check the Triton configs: {exc} "
                                "(pip install 'tritonclient[grpc]')") from exc
    repo = Path(repo)
    parsed = {}
    for cfg_path in sorted(repo.glob(f"*/{CONFIG}")):
        name = cfg_path.parent.name
        try:
            cfg = text_format.Parse(cfg_path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            raise TritonExportError(f"{cfg_path} does not parse with Triton's schema: {exc}") from exc
        if cfg.name != name:
            raise TritonExportError(f"{cfg_path}: name {cfg.name!r} differs from its folder {name!r}")
        versions = [p for p in cfg_path.parent.iterdir() if p.is_dir() and p.name.isdigit()]
        want = PLAN_FILE if cfg.platform == "tensorrt_plan" else ONNX_FILE
        if not versions or not all((v / want).is_file() for v in versions):
            raise TritonExportError(f"{cfg_path.parent}: expected <version>/{want}")
        parsed[name] = cfg
    if not parsed:
        raise TritonExportError(f"{repo} holds no models (no */{CONFIG})")
    return parsed


# ------------------------------------------------------------------ the bundle exporter
REPOSITORY_DIR = "triton"


def export_triton(ctx, direction: str, out_path: Path) -> Path:
    """Exporter of the ``triton`` format (same signature as every exporter in export.exporters).

    Writes the direction's models into the bundle's Triton repository
    (``BUNDLE/triton/``: the ONNX, and the TensorRT plan when the ``tensorrt``
    format was built in this export) and its README, and returns ``out_path``:
    a small JSON descriptor of what it wrote (model names, relative paths,
    sha256) that the bundle manifest lists and hashes.
    """
    import onnx

    from facesketch.formats import FORMATS

    from .onnx_io import fp32_onnx, save_onnx

    opts = FORMATS["triton"].options
    options = TritonOptions(max_batch_size=int(ctx.max_batch), instances=int(opts.get("instances", 1)),
                            kind=str(opts.get("kind", "gpu")),
                            max_queue_delay_us=int(opts.get("max_queue_delay_us", 500)),
                            workspace_bytes=int(opts.get("workspace_bytes", 1 << 30)))
    repo = ctx.out / REPOSITORY_DIR
    # The repository's ONNX: the bundle's fp32 graph, labelled as the triton format.
    src = save_onnx(ctx, onnx.load(str(fp32_onnx(ctx, direction))), direction, "triton",
                     ctx.work / f"{direction}.triton.onnx")
    engine = ctx.out / f"{direction}{FORMATS['tensorrt'].suffix}"
    trt_info = ctx.extras.get(("tensorrt", direction), {}).get("info", {})
    written = write_model(repo, direction, src, image_size=ctx.size, options=options,
                          plan_path=engine if engine.is_file() else None,
                          plan_max_batch=int(ctx.max_batch), plan_info=trt_info)
    write_readme(repo, options)
    if schema_available():
        validate(repo)  # every config.pbtxt against Triton's own protobuf schema
    else:
        log.info("triton: tritonclient[grpc] is not installed; config.pbtxt not checked against "
                 "Triton's schema (pip install 'tritonclient[grpc]')")
    from training.checkpoint import sha256_file
    files = sorted(p for name in written for p in (repo / name).rglob("*") if p.is_file())
    desc = {"repository": REPOSITORY_DIR, "direction": direction,
            "models": {name: {"engine": "tensorrt_plan" if name.endswith(PLAN_SUFFIX) else "onnx",
                              "config": cfg.relative_to(ctx.out).as_posix()}
                       for name, cfg in written.items()},
            "files": {p.relative_to(ctx.out).as_posix(): sha256_file(p) for p in files},
            "options": {"max_batch_size": options.max_batch_size, "instances": options.instances,
                        "kind": options.kind}}
    ctx.note("triton", direction, info={"models": sorted(written), "repository": REPOSITORY_DIR,
                                        "plan": any(n.endswith(PLAN_SUFFIX) for n in written)})
    _write_text(json.dumps(desc, indent=1) + "\n", out_path)
    return out_path
