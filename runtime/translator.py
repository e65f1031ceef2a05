"""Translator: bundle (or checkpoint) in, translated images out, fastest backend.

    from runtime import Translator
    t = Translator.load("bundles/default")            # backend="auto", device="auto"
    r = t.translate("face.jpg")                          # direction="auto"
    r.image, r.direction, r.domain, r.confidence, r.backend, r.latency_ms

Pre/post-processing is numpy/PIL only (facesketch.imageio): any mode and size
-> RGB with EXIF orientation applied -> fitted into the model's square keeping
the aspect ratio (edge padding, as in training) -> normalised to [-1, 1]; the
output is cropped back and resized to the input's size.

Thread safety: one session per (backend, direction), each guarded by its own
lock (see runtime.backends); the translator itself only adds a lock around
lazily loading a direction. Any number of threads may call translate and
translate_batch concurrently; calls on the same direction are serialised at
the engine. translate_batch makes one engine call per direction group (split
only above the bundle's max batch), which is what a micro-batching server wants.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facesketch import imageio
from facesketch.formats import DIRECTIONS, FORMATS, SOURCE_DOMAIN

from . import backends as B
from . import select
from .align import ALIGN_MODES, frame_face, paste_back
from .bundle import Bundle, BundleError, is_bundle

log = logging.getLogger("facesketch.runtime")
DOMAIN_DIRECTION = {dom: d for d, dom in SOURCE_DOMAIN.items()}


@dataclass
class Translation:
    image: np.ndarray          # H x W x 3 uint8, the input's size
    direction: str             # photo2sketch or sketch2photo
    domain: str                # the input's domain (detected, or implied by the direction)
    confidence: float | None   # detector confidence in [0.5, 1]; None when direction was given
    backend: str
    latency_ms: float          # wall time of the call that produced it (batch: whole batch)
    # the model's own output on its pixel grid, padding cropped, before the resize to the
    # input's size (what artefact measures such as metrics.checkerboard_db look at)
    raw: np.ndarray | None = None
    # face alignment (align="auto"): what was done ("aligned", "already framed",
    # "no face found", "off", or why the finder is unavailable), and the crop's
    # transform when aligned; ``image`` is then the translated crop (or the whole
    # frame with the crop pasted back, paste=True)
    face: str = "off"
    alignment: Any = None

    @property
    def face_box(self) -> str | None:
        """The X-Face-Box value (x,y,w,h,angle in input pixels) when a face was aligned."""
        return self.alignment.header() if self.alignment is not None else None


# ------------------------------------------------------------------ model sources
class BundleSource:
    """An exported bundle as the Translator (and runtime.bench) loads engines from it."""

    kind = "bundle"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.path = bundle.root
        self.hash = bundle.hash
        self.image_size = bundle.image_size
        self.normalization = bundle.normalization
        self.directions = bundle.directions
        self.detector = bundle.detector
        self.postprocess = bundle.postprocess
        self.max_batch = bundle.max_batch
        self.formats = bundle.formats

    def create(self, spec: B.BackendSpec, direction: str) -> B.Backend:
        entry = dict(self.bundle.entry(spec.format, direction))
        entry.setdefault("image_size", self.image_size)
        entry.setdefault("max_batch", self.max_batch)
        if spec.engine == "torch":
            entry.setdefault("info", {}).setdefault("arch", self.bundle.arch())
        files = self.bundle.files_for(entry)
        return spec.create(files, entry)

    def parity(self, spec: B.BackendSpec, direction: str) -> dict[str, Any]:
        return self.bundle.entry(spec.format, direction).get("parity", {})

    def verify(self, fmt: str) -> None:
        """Check the sha256 of every file of ``fmt`` (all directions); BundleError if one fails."""
        for d in self.directions:
            self.bundle.files_for(self.bundle.entry(fmt, d))

    def card(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"source": m.get("source", {}), "created": m.get("created"),
                "skipped_formats": m.get("skipped", {}), "refused_formats": m.get("refused", {})}


class CheckpointSource:
    """A training checkpoint, run through the torch backends (needs torch)."""

    kind = "checkpoint"
    formats = ["torch"]

    def __init__(self, path: Path):
        try:
            from training.checkpoint import load_model, resolve, sha256_file
        except ImportError as exc:
            raise RuntimeError(f"{path} is a training checkpoint, which needs torch to run "
                               f"({exc}); export a bundle with `facesketch export` to run without "
                               "torch") from exc
        p = Path(path)
        if p.is_dir() and (p / "best" / "model.safetensors").is_file():
            p = p / "best"  # a run folder: its best checkpoint, as `facesketch export` takes
        st = resolve(p)
        self.nets, self.cfg = load_model(st)
        self.path = st
        self.hash = self.cfg.get("weights_sha256") or sha256_file(st)
        self.image_size = int(self.cfg["image_size"])
        self.normalization = self.cfg["normalization"]
        gens = self.cfg.get("generators", {"photo2sketch": "G_A", "sketch2photo": "G_B"})
        self.generators = gens
        self.directions = [d for d in DIRECTIONS if d in gens]
        self.detector = self.cfg.get("detector")
        self.postprocess = self.cfg.get("postprocess") or {}
        self.max_batch = 64

    def create(self, spec: B.BackendSpec, direction: str) -> B.Backend:
        entry = {"format": "torch", "direction": direction, "image_size": self.image_size,
                 "max_batch": self.max_batch, "info": {"arch": self.cfg["arch"]}}
        return spec.create({}, entry, module=self.nets[self.generators[direction]],
                           arch=self.cfg["arch"])

    def parity(self, spec, direction):
        return {"psnr_db": float("inf"), "reference": "is the reference"}

    def verify(self, fmt: str) -> None:
        """Nothing to check: the checkpoint was verified when it was loaded."""

    def card(self) -> dict[str, Any]:
        keys = ("arch", "image_size", "metrics", "train", "data", "weights_sha256")
        return {"source": {k: self.cfg.get(k) for k in keys}}


# ------------------------------------------------------------------ translator
def _formats_for(source, backend: str) -> list[str]:
    if backend == "auto":
        return list(source.formats)
    if backend in FORMATS:
        if backend not in source.formats:
            raise ValueError(f"this {source.kind} has no {backend} files "
                             f"(formats: {', '.join(source.formats)})")
        return [backend]
    raise ValueError(f"unknown backend {backend!r}; use auto, a backend "
                     f"({', '.join(B.BACKENDS)}) or a format ({', '.join(FORMATS)})")


def _candidates(source, formats: list[str], device: str,
                allow_partial: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(backend name -> loader, skipped name -> why) among ``formats``: available here,
    passed parity at export, files intact (a damaged file raises BundleError unless
    ``allow_partial``, see Translator.load)."""
    probe_dir = source.directions[0]
    candidates, skipped = {}, {}
    damaged: dict[str, BundleError] = {}     # format -> its integrity error
    checked: set[str] = set()
    for fmt in formats:
        for spec in B.for_format(fmt, device, auto_only=True):
            ok, why = spec.available()
            if not ok:
                skipped[spec.name] = why
                continue
            parity = source.parity(spec, probe_dir)
            if parity and parity.get("passed") is False:
                skipped[spec.name] = f"parity failed at export ({parity.get('psnr_db')} dB)"
                continue
            if fmt not in checked:
                checked.add(fmt)
                try:
                    source.verify(fmt)
                except BundleError as exc:
                    damaged[fmt] = exc
            if fmt in damaged:
                skipped[spec.name] = f"damaged bundle file: {damaged[fmt]}"
                continue
            candidates[spec.name] = (lambda s=spec: source.create(s, probe_dir).load())
    if damaged:
        errors = "; ".join(str(e) for e in damaged.values())
        intact = ", ".join(candidates) or "none"
        if not allow_partial:
            raise BundleError(
                f"{errors}. Not falling back to another engine; to run the intact ones "
                f"({intact}) anyway, pass allow_partial=True (--allow-partial)")
        log.warning("allow_partial: leaving out the %s engine(s) (%s); running the intact "
                    "ones: %s", ", ".join(damaged), errors, intact)
    return candidates, skipped


class Translator:
    def __init__(self, source, spec: B.BackendSpec, sessions: dict[str, B.Backend],
                 selection: select.Selection | None, device: str):
        self._source = source
        self._spec = spec
        self._sessions = dict(sessions)
        self._selection = selection
        self._device = device
        self._load_lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self.engine_calls = 0          # engine invocations so far (batching is observable)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "auto", *,
             server: str | None = None, use_cache: bool = True,
             allow_partial: bool = False) -> "Translator":
        """Load a bundle folder (manifest.json) or a checkpoint (needs torch).

        backend: "auto" (time the loadable backends, cache the pick), a backend name
        (see runtime.backends.BACKENDS) or a format name (auto among its backends);
        "triton" runs the engines on a Triton server (``server`` HOST:PORT, or
        $FACESKETCH_TRITON_URL; runtime/triton.py). device: "auto", "cpu" or "cuda"
        (restricts the candidates).

        With "auto" or a format name, the files (both directions) of every candidate
        engine are checked against their sha256 first. One that fails raises
        BundleError naming the file -- a damaged bundle is never hidden by quietly
        running another engine -- unless ``allow_partial=True``: then the intact
        engines are the candidates and a warning names the ones left out. (A backend
        named explicitly loads just its own files, checked as they are first used.)
        """
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no model at {p}: give a bundle folder (made by "
                                    "`facesketch export`) or a checkpoint folder")
        source = BundleSource(Bundle.load(p)) if is_bundle(p) else CheckpointSource(p)
        if backend == "triton" or server:
            from .triton import remote_source
            source = remote_source(source, backend, server)
            spec = B.BACKENDS["triton"]
            probe = source.directions[0]
            return cls(source, spec, {probe: source.create(spec, probe).load()}, None, device)

        if backend != "auto" and backend in B.BACKENDS:
            return cls._load_named(source, backend, device)
        candidates, skipped = _candidates(source, _formats_for(source, backend), device,
                                          allow_partial)
        if not candidates:
            raise RuntimeError(f"no backend can run {p} here (device {device}): "
                               + "; ".join(f"{n}: {w}" for n, w in skipped.items()))
        sel, loaded = select.choose(candidates, source.hash, source.image_size, device,
                                    use_cache=use_cache, skipped=skipped)
        if sel.backend not in loaded:  # cached choice: load just that one
            try:
                loaded = {sel.backend: candidates[sel.backend]()}
            except Exception as exc:  # the cached pick broke: measure again
                log.warning("cached backend %s failed to load (%s); measuring again", sel.backend, exc)
                sel, loaded = select.choose(candidates, source.hash, source.image_size, device,
                                            use_cache=False, skipped=skipped)
        for name, b in loaded.items():
            if name != sel.backend:
                b.close()
        return cls(source, B.BACKENDS[sel.backend], {source.directions[0]: loaded[sel.backend]},
                   sel, device)

    @classmethod
    def _load_named(cls, source, backend: str, device: str) -> "Translator":
        """One backend asked for by name: its own files, checked as they are first used."""
        spec = B.BACKENDS[backend]
        if spec.format not in source.formats:
            raise ValueError(f"backend {backend} runs the {spec.format} format, which this "
                             f"{source.kind} lacks (formats: {', '.join(source.formats)})")
        if device not in ("auto", spec.device):
            raise ValueError(f"backend {backend} runs on {spec.device}, not {device}")
        ok, why = spec.available()
        if not ok:
            raise RuntimeError(f"backend {backend} is not available here: {why}")
        probe_dir = source.directions[0]
        return cls(source, spec, {probe_dir: source.create(spec, probe_dir).load()}, None, device)

    # ---------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        return self._spec.name

    @property
    def image_size(self) -> int:
        return self._source.image_size

    @property
    def directions(self) -> list[str]:
        return list(self._source.directions)

    def session(self, direction: str) -> B.Backend:
        if direction not in self._source.directions:
            if direction not in DIRECTIONS:
                raise ValueError(f"unknown direction {direction!r}; use auto, "
                                 + " or ".join(DIRECTIONS))
            raise ValueError(f"this model has no {direction} generator")
        s = self._sessions.get(direction)
        if s is None:
            with self._load_lock:
                s = self._sessions.get(direction)
                if s is None:
                    s = self._source.create(self._spec, direction).load()
                    self._sessions[direction] = s
        return s

    def info(self) -> dict[str, Any]:
        src = self._source
        probe = src.directions[0]
        return {
            "kind": src.kind, "path": str(src.path), "hash": src.hash,
            "image_size": src.image_size, "normalization": src.normalization,
            "directions": list(src.directions), "formats": list(src.formats),
            "detector": self.detector_method(),
            "backend": self.backend, "format": self._spec.format, "device": self._spec.device,
            "precision": self._spec.precision,
            "parity": src.parity(self._spec, probe),
            "selection": self._selection.to_dict() if self._selection else
            {"backend": self.backend, "requested": True},
            "model": src.card(),
        }

    # ---------------------------------------------------------------- numerics
    def _normalize(self, squares: np.ndarray) -> np.ndarray:
        return imageio.normalize(squares, self._source.normalization)

    def _denormalize(self, y: np.ndarray) -> np.ndarray:
        return imageio.denormalize(y, self._source.normalization)

    def run(self, direction: str, batch: np.ndarray) -> np.ndarray:
        """Raw engine call: float32 N x 3 x S x S in [-1, 1] -> same (split above max batch)."""
        s = self.session(direction)
        step = max(1, int(self._source.max_batch))
        outs = []
        for i in range(0, len(batch), step):
            outs.append(s.run(batch[i:i + step]))
            with self._calls_lock:
                self.engine_calls += 1
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    # ---------------------------------------------------------------- translate
    def detector_method(self) -> str:
        """Which photo/sketch detector answers here: the built-in CNN, or (where it cannot
        run) the features' logistic model with this model's own fitted parameters."""
        from facesketch.domain import method_used
        used = method_used("auto")
        if used != "cnn":
            used += ", fitted by this model's run" if self._source.detector else ", built-in"
        return used

    def detect(self, image: Any) -> tuple[str, float]:
        """(domain, confidence) of an image by the photo/sketch detector: the built-in CNN,
        or this model's own fitted feature model where the CNN cannot run. The answer
        direction="auto" acts on, for every caller."""
        from facesketch.domain import detect_domain
        domain, conf = detect_domain(imageio.decode(image), self._source.detector)
        return domain, float(conf)

    def _resolve(self, rgb: np.ndarray, direction: str) -> tuple[str, str, float | None]:
        if direction == "auto":
            domain, conf = self.detect(rgb)
            return DOMAIN_DIRECTION[domain], domain, conf
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; use auto, " + " or ".join(DIRECTIONS))
        return direction, SOURCE_DOMAIN[direction], None

    def translate(self, image: Any, direction: str = "auto", align: str = "off",
                  paste: bool = False, previous_box: str | None = None) -> Translation:
        return self.translate_batch([image], direction, align, paste,
                                    [previous_box] if previous_box else None)[0]

    def translate_batch(self, images: Sequence[Any], direction: str | Sequence[str] = "auto",
                        align: str = "off", paste: bool = False,
                        previous_boxes: Sequence[str | None] | None = None) -> list[Translation]:
        """Translate several images; one engine call per direction group.

        ``direction`` is one value for all images or one per image. ``align="auto"``
        finds the largest face, crops it in the training data's framing and translates
        the crop (see runtime.align); ``paste`` puts the result back into the frame;
        ``previous_boxes`` (the last frame's X-Face-Box per image, video) steadies the crop.
        Raises facesketch.imageio.ImageError for an undecodable image (naming its index)
        and ValueError for an unknown direction or align mode; nothing is translated then.
        """
        t0 = time.perf_counter()
        images = list(images)
        dirs = [direction] * len(images) if isinstance(direction, str) else list(direction)
        if len(dirs) != len(images):
            raise ValueError(f"got {len(dirs)} directions for {len(images)} images")
        for d in dirs:
            if d != "auto" and d not in DIRECTIONS:
                raise ValueError(f"unknown direction {d!r}; use auto, " + " or ".join(DIRECTIONS))
        rgbs = []
        for i, im in enumerate(images):
            try:
                rgbs.append(imageio.decode(im))
            except imageio.ImageError as exc:
                raise imageio.ImageError(f"image {i}: {exc}" if len(images) > 1 else str(exc)) from exc
        if align not in ALIGN_MODES:
            raise ValueError(f"unknown align mode {align!r}; use {' or '.join(ALIGN_MODES)}")
        resolved = [self._resolve(rgb, d) for rgb, d in zip(rgbs, dirs)]
        prev = list(previous_boxes or []) + [None] * len(rgbs)
        framed = [frame_face(rgb, prev[i]) if align == "auto" else (rgb, None, "off")
                  for i, rgb in enumerate(rgbs)]
        fitted = [imageio.fit_square(f[0], self.image_size) for f in framed]
        out: list[Any] = [None] * len(images)
        for d in DIRECTIONS:
            idx = [i for i, r in enumerate(resolved) if r[0] == d]
            if not idx:
                continue
            x = self._normalize(np.stack([fitted[i][0] for i in idx]))
            y = self._denormalize(self.run(d, x))
            if self._source.postprocess.get(d) == "gray":
                y = imageio.to_gray_rgb(y)
            for k, i in enumerate(idx):
                out[i] = (imageio.unfit(y[k], fitted[i][1]), imageio.inner(y[k], fitted[i][1]))
        if paste:
            out = [(paste_back(rgbs[i], o[0], framed[i][1]), o[1]) for i, o in enumerate(out)]
        ms = (time.perf_counter() - t0) * 1000.0
        return [Translation(image=out[i][0], direction=r[0], domain=r[1], confidence=r[2],
                            backend=self.backend, latency_ms=ms, raw=out[i][1],
                            face=framed[i][2], alignment=framed[i][1])
                for i, r in enumerate(resolved)]

    def close(self) -> None:
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()
