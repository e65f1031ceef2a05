"""NVIDIA Triton Inference Server as a runtime backend (tritonclient.http, imported lazily).

    t = Translator.load("bundles/default", backend="triton", server="localhost:8000")
    facesketch serve --backend triton --server localhost:8000

The bundle (or checkpoint) given to ``Translator.load`` still provides what
runs on this side: pre/post-processing, the image size, the normalisation and
the photo/sketch detector. The server runs the generators. Which server model
serves which direction is read from the server itself -- the facesketch
parameters that ``facesketch export --formats triton`` writes into every
``config.pbtxt`` (direction, image size, normalisation, source checkpoint
sha256) -- never from model names, and the source checkpoint must be the one
the local bundle was exported from. Where a direction has both, the TensorRT
plan (``*_trt``) is preferred over the ONNX model.

Also here: ``RepositoryOnnxBackend`` (``triton-repo-cpu``), which runs a Triton
repository's ``model.onnx`` on onnxruntime CPU; the exporter's parity check
uses it to verify the very file the server will load.

Torch-free; nothing is imported from tritonclient until a backend loads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from facesketch.formats import DIRECTIONS

from . import backends as B
from .bundle import BundleError

log = logging.getLogger("facesketch.runtime")

ENV_URL = "FACESKETCH_TRITON_URL"
PARAM_PREFIX = "facesketch."
PLAN_SUFFIX = "_trt"
ENGINE_PREFERENCE = ("tensorrt_plan", "onnx")
_WIRE_TO_NUMPY = {"FP32": np.float32, "FP16": np.float16}


def _import_http():
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise B.BackendUnavailable("tritonclient is not installed (pip install 'tritonclient[http]')") from exc
    except RuntimeError as exc:  # tritonclient without its http extra raises RuntimeError
        raise B.BackendUnavailable(f"tritonclient has no HTTP support: {exc} "
                                   "(pip install 'tritonclient[http]')") from exc
    return httpclient


def split_url(url: str) -> tuple[str, bool]:
    """'http://host:8000', 'https://host', 'host:8000' -> ('host:8000', ssl)."""
    u = url.strip().rstrip("/")
    if not u:
        raise ValueError("empty Triton server URL; give HOST:PORT, e.g. localhost:8000")
    ssl = u.startswith("https://")
    for scheme in ("http://", "https://"):
        if u.startswith(scheme):
            u = u[len(scheme):]
    if "/" in u:
        raise ValueError(f"Triton server URL {url!r} has a path; give HOST:PORT (HTTP port, "
                         "8000 by default)")
    return u, ssl


def client(url: str, timeout: float = 60.0):
    httpclient = _import_http()
    host, ssl = split_url(url)
    return httpclient.InferenceServerClient(url=host, ssl=ssl, connection_timeout=min(timeout, 10.0),
                                            network_timeout=timeout)


def server_status(url: str | None, timeout: float = 3.0) -> tuple[bool, str]:
    """(True, '') when a Triton server answers live at ``url``, else (False, why)."""
    if not url:
        return False, f"no Triton server named (pass --server URL or set {ENV_URL})"
    try:
        c = client(url, timeout)
    except (B.BackendUnavailable, ValueError) as exc:
        return False, str(exc)
    try:
        live = c.is_server_live()
    except Exception as exc:  # connection refused, DNS, timeout: tritonclient raises many types
        return False, f"no Triton server reachable at {url}: {type(exc).__name__}: {exc}"
    finally:
        c.close()
    return (True, "") if live else (False, f"the Triton server at {url} is not live")


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """The facesketch.* parameters of a model config as the server returns it (JSON)."""
    out = {}
    for key, val in (config.get("parameters") or {}).items():
        if key.startswith(PARAM_PREFIX):
            out[key[len(PARAM_PREFIX):]] = val.get("string_value", "") if isinstance(val, dict) else str(val)
    return out


# ------------------------------------------------------------------ the remote backend
class TritonBackend(B.Backend):
    """One model on a Triton server (one direction). Calls from several threads run
    concurrently (one HTTP connection per thread): the server batches them."""

    serialize = False

    def __init__(self, spec: B.BackendSpec, files: dict[str, Path], entry: dict[str, Any],
                 server: str | None = None, model: str | None = None):
        super().__init__(spec, files, entry)
        self.server = server or entry.get("server") or os.environ.get(ENV_URL)
        self.model = model or entry.get("model")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()

    @classmethod
    def check(cls, spec):
        try:
            _import_http()
        except B.BackendUnavailable as exc:
            return False, str(exc)
        return True, ""

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            c = client(self.server, float(self.spec.options.get("timeout_s", 120)))
            self._local.client = c
            with self._clients_lock:
                self._clients.append(c)
        return c

    def _load(self):
        if not self.server:
            raise B.BackendUnavailable(f"{self.name}: no Triton server named (pass --server URL "
                                       f"or set {ENV_URL})")
        if not self.model:
            raise B.BackendUnavailable(f"{self.name}: no model named for {self.entry.get('direction')}")
        ok, why = server_status(self.server)
        if not ok:
            raise B.BackendUnavailable(f"{self.name}: {why}")
        c = self._client()
        if not c.is_model_ready(self.model):
            raise B.BackendUnavailable(f"{self.name}: model {self.model!r} is not ready on {self.server}")
        meta = c.get_model_metadata(self.model)
        cfg = c.get_model_config(self.model)
        if len(meta.get("inputs", [])) != 1 or len(meta.get("outputs", [])) != 1:
            raise BundleError(f"Triton model {self.model!r} on {self.server} has "
                              f"{len(meta.get('inputs', []))} inputs and {len(meta.get('outputs', []))} "
                              "outputs; a facesketch generator has one of each")
        inp, out = meta["inputs"][0], meta["outputs"][0]
        if inp["datatype"] not in _WIRE_TO_NUMPY:
            raise BundleError(f"Triton model {self.model!r} takes {inp['datatype']}, not FP32/FP16")
        B.check_metadata(dict(parameters(cfg), format="triton"), dict(self.entry, format="triton"),
                         f"Triton model {self.model!r} on {self.server}")
        self._in, self._out = inp["name"], out["name"]
        self._dtype = inp["datatype"]
        self._max_batch = int(cfg.get("max_batch_size", 0))
        shape = [int(d) for d in inp["shape"]]
        if self._max_batch and shape and shape[0] == -1:
            shape = shape[1:]
        s = self.image_size
        if s and len(shape) == 3 and shape[1:] not in ([s, s], [-1, -1]):
            raise BundleError(f"Triton model {self.model!r} takes {shape[1]}x{shape[2]} images, the "
                              f"local model {s}x{s}: the server runs a different export")

    def _run(self, x: np.ndarray) -> np.ndarray:
        step = self._max_batch or 1  # no implicit batch axis: the model takes 1 x 3 x S x S
        outs = [self._infer(x[i:i + step]) for i in range(0, len(x), step)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        from tritonclient.utils import InferenceServerException
        httpclient = _import_http()
        data = x.astype(_WIRE_TO_NUMPY[self._dtype], copy=False)
        inp = httpclient.InferInput(self._in, list(data.shape), self._dtype)
        inp.set_data_from_numpy(data, binary_data=True)
        want = httpclient.InferRequestedOutput(self._out, binary_data=True)
        try:
            res = self._client().infer(self.model, [inp], outputs=[want])
        except InferenceServerException as exc:
            raise RuntimeError(f"Triton model {self.model!r} on {self.server}: {exc}") from exc
        return np.asarray(res.as_numpy(self._out), dtype=np.float32)

    def close(self):
        with self._clients_lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
        self._local = threading.local()
        super().close()


# ------------------------------------------------------------------ a repository, checked locally
class RepositoryOnnxBackend(B.Backend):
    """The ``model.onnx`` of a bundle's Triton repository on onnxruntime CPU (export check)."""

    @classmethod
    def check(cls, spec):
        if B._missing("onnxruntime"):
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        return True, ""

    def _load(self):
        import onnxruntime as ort
        desc_path = Path(self.files["model"])
        desc = json.loads(desc_path.read_text())
        onnx_models = [m for m in desc.get("models", {}).values() if m.get("engine") == "onnx"]
        if not onnx_models:
            raise BundleError(f"{desc_path} lists no ONNX model")
        cfg = desc_path.parent / onnx_models[0]["config"]
        versions = sorted((p for p in cfg.parent.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        if not versions or not (versions[-1] / "model.onnx").is_file():
            raise BundleError(f"{cfg.parent} has no <version>/model.onnx")
        path = versions[-1] / "model.onnx"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        meta = {k.removeprefix(PARAM_PREFIX): v for k, v in sess.get_modelmeta().custom_metadata_map.items()}
        B.check_metadata(meta, self.entry, str(path))
        self._sess, self._in, self._out = sess, sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def _run(self, x):
        return self._sess.run([self._out], {self._in: x})[0]

    def close(self):
        self._sess = None
        super().close()


# ------------------------------------------------------------------ the model source
def _expected_source_sha(local) -> str | None:
    """sha256 of the checkpoint file the local bundle/checkpoint comes from."""
    bundle = getattr(local, "bundle", None)
    if bundle is not None:
        return (bundle.manifest.get("source") or {}).get("checkpoint_sha256")
    path = Path(getattr(local, "path", ""))
    if path.is_file():
        from .bundle import sha256_file
        return sha256_file(path)
    return None


def discover(url: str) -> dict[str, list[dict[str, Any]]]:
    """{direction: [model descriptions]} of the ready facesketch models on the server."""
    c = client(url, 30.0)
    try:
        names = {m.get("name") for m in c.get_model_repository_index() if m.get("name")}
        names |= set(DIRECTIONS) | {d + PLAN_SUFFIX for d in DIRECTIONS}  # (loaded outside the index)
        found: dict[str, list[dict[str, Any]]] = {}
        for name in sorted(names):
            try:
                if not c.is_model_ready(name):
                    continue
            except Exception as exc:  # tritonclient raises InferenceServerException for unknown names
                log.debug("triton: %s not ready (%s)", name, exc)
                continue
            cfg = c.get_model_config(name)
            params = parameters(cfg)
            if params.get("direction") not in DIRECTIONS:
                continue
            found.setdefault(params["direction"], []).append(
                {"name": name, "params": params, "max_batch_size": int(cfg.get("max_batch_size", 0))})
        return found
    finally:
        c.close()


class TritonSource:
    """Wraps a local bundle/checkpoint source; the engines run on a Triton server."""

    kind = "triton"
    formats = ["triton"]

    def __init__(self, local, server: str):
        self.local = local
        self.server = server
        ok, why = server_status(server)
        if not ok:
            raise RuntimeError(why)
        for attr in ("path", "hash", "image_size", "normalization", "detector"):
            setattr(self, attr, getattr(local, attr))
        want = _expected_source_sha(local)
        found = discover(server)
        self.models: dict[str, dict[str, Any]] = {}
        problems = []
        for d in local.directions:
            cands = found.get(d, [])
            match = [m for m in cands if want is None or m["params"].get("source_sha256") in (None, "", want)]
            if not match:
                if cands:
                    problems.append(f"{d}: the server's models ({', '.join(m['name'] for m in cands)}) were "
                                    f"exported from checkpoint sha256 "
                                    f"{cands[0]['params'].get('source_sha256', '?')[:12]}..., "
                                    f"{local.path} from {str(want)[:12]}...")
                continue
            match.sort(key=lambda m: ENGINE_PREFERENCE.index(m["params"].get("engine", "onnx"))
                       if m["params"].get("engine", "onnx") in ENGINE_PREFERENCE else len(ENGINE_PREFERENCE))
            m = match[0]
            size = m["params"].get("image_size")
            if size and int(size) != int(local.image_size):
                problems.append(f"{d}: server model {m['name']} is {size}x{size}, {local.path} "
                                f"{local.image_size}x{local.image_size}")
                continue
            self.models[d] = m
        if not self.models:
            have = ", ".join(f"{d}: {[m['name'] for m in ms]}" for d, ms in found.items()) or "none"
            raise RuntimeError(f"the Triton server at {server} serves no model of {local.path} "
                               f"(facesketch models there: {have})" + (f"; {'; '.join(problems)}" if problems else "")
                               + ". Serve the repository written by `facesketch export --formats triton` "
                                 "of this bundle")
        for p in problems:
            log.warning("triton: %s", p)
        self.directions = [d for d in local.directions if d in self.models]
        sizes = [m["max_batch_size"] for m in self.models.values() if m["max_batch_size"]]
        self.max_batch = min([int(local.max_batch), *sizes])

    def create(self, spec: B.BackendSpec, direction: str) -> B.Backend:
        m = self.models[direction]
        entry = {"format": "triton", "direction": direction, "image_size": self.image_size,
                 "max_batch": self.max_batch, "model": m["name"], "server": self.server}
        return spec.create({}, entry, server=self.server, model=m["name"])

    def parity(self, spec, direction) -> dict[str, Any]:
        return {}

    def card(self) -> dict[str, Any]:
        return dict(self.local.card(), triton={
            "server": self.server,
            "models": {d: {"name": m["name"], "engine": m["params"].get("engine"),
                           "max_batch_size": m["max_batch_size"]} for d, m in self.models.items()}})


def remote_source(local, backend: str, server: str | None) -> TritonSource:
    """Translator.load's hook: the local source, its engines on the Triton server."""
    if backend not in ("auto", "triton"):
        raise ValueError(f"--server names a Triton server; it goes with --backend triton, not {backend}")
    url = server or os.environ.get(ENV_URL)
    if not url:
        raise ValueError(f"the triton backend needs a server: pass --server HOST:PORT (the HTTP "
                         f"port, 8000 by default) or set {ENV_URL}")
    return TritonSource(local, url)
