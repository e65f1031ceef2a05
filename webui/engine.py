"""The model behind the web app: loaded once per process, fed by a micro-batcher.

``ModelHolder`` loads ``runtime.Translator`` in a background thread (so the
server answers at once and ``/api/health`` says 503 until the model is loaded
and warm), then starts one ``MicroBatcher`` worker thread.

``MicroBatcher``: request threads decode their upload and ``submit`` the image
to a bounded queue (full -> ``QueueFull``, answered 503 + Retry-After). The one
worker takes the first waiting image, gathers more for at most
``max_wait_ms`` (or until ``max_size``) and
makes one ``Translator.translate_batch`` call for the batch (a direction per
image; the Translator runs one engine call per direction group). Counters (batches,
sizes, rejections) are exposed through ``stats()`` and ``/api/info``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import WebConfig

log = logging.getLogger("facesketch.webui")


class QueueFull(RuntimeError):
    """The engine queue is full; the client should retry later."""


class NotReady(RuntimeError):
    """The model is not loaded (yet, or it failed to load)."""


class Timeout(RuntimeError):
    """A request waited longer than request_timeout_s for the engine."""


@dataclass
class Job:
    image: np.ndarray
    direction: str
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    batch_size: int = 0

    def wait(self, timeout: float) -> Any:
        if not self.done.wait(timeout):
            raise Timeout(f"the engine did not answer within {timeout:g} s")
        if self.error is not None:
            raise self.error
        return self.result


class MicroBatcher:
    """Bounded queue + one worker thread calling ``translate_batch(images, direction)``."""

    def __init__(self, translate_batch: Callable[..., list], max_size: int, max_wait_ms: float,
                 queue_size: int, policy: str = "adaptive"):
        self._translate_batch = translate_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.policy = policy
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._incoming = 0           # requests inside the API that have not submitted yet
        self._sizes: Counter[int] = Counter()
        self._items = 0
        self._rejected = 0
        self._failed_batches = 0
        self._engine_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facesketch-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ request side
    def announce(self) -> None:
        """A request has arrived and will submit an image soon (adaptive waiting)."""
        with self._lock:
            self._incoming += 1

    def withdraw(self) -> None:
        """An announced request will not submit after all (bad input)."""
        with self._lock:
            self._incoming = max(0, self._incoming - 1)

    def submit(self, image: np.ndarray, direction: str, announced: bool = False) -> Job:
        """Queue one decoded image; raises QueueFull when the queue is full."""
        job = Job(image, direction)
        with self._lock:
            if announced:
                self._incoming = max(0, self._incoming - 1)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self._rejected += 1
                raise QueueFull(f"the engine queue is full ({self._queue.maxsize} "
                                "images waiting)") from None
        return job

    def qsize(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------ worker side
    def _gather(self, first: Job) -> list[Job]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                job = False
            if job is None:                  # close(): stop gathering, answer what we have
                break
            if job is not False:
                batch.append(job)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            if self.policy == "adaptive":
                with self._lock:
                    coming = self._incoming
                if coming == 0:
                    break           # nobody else is on the way: do not make this one wait
                remaining = min(remaining, 0.0005)   # re-check soon: they may give up
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if job is None:
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                break
            batch = self._gather(first)
            self._process(batch)

    def _process(self, batch: list[Job]) -> None:
        """One translate_batch call with a direction per image; the Translator makes
        one engine call per direction group ("auto" images are detected first)."""
        t0 = time.perf_counter()
        try:
            results = self._translate_batch([j.image for j in batch],
                                            direction=[j.direction for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"translate_batch returned {len(results)} results "
                                   f"for {len(batch)} images")
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request
            if len(batch) > 1:
                log.warning("batch of %d failed (%s: %s); retrying one by one",
                            len(batch), type(exc).__name__, exc)
                with self._lock:
                    self._failed_batches += 1
                self._one_by_one(batch)
            else:
                batch[0].error = exc
                batch[0].done.set()
        else:
            for job, res in zip(batch, results):
                job.result, job.batch_size = res, len(batch)
                job.done.set()
        with self._lock:
            self._sizes[len(batch)] += 1
            self._items += len(batch)
            self._engine_s += time.perf_counter() - t0

    def _one_by_one(self, jobs: list[Job]) -> None:
        """After a failed batch, give every request its own answer or its own error."""
        for job in jobs:
            try:
                job.result = self._translate_batch([job.image], direction=job.direction)[0]
                job.batch_size = 1
            except Exception as exc:  # noqa: BLE001 - re-raised in the request thread
                job.error = exc
            job.done.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            batches = sum(self._sizes.values())
            return {
                "batches": batches,
                "images": self._items,
                "max_batch": max(self._sizes) if self._sizes else 0,
                "mean_batch": round(self._items / batches, 3) if batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self._sizes.items())},
                "rejected_queue_full": self._rejected,
                "failed_batches": self._failed_batches,
                "engine_seconds": round(self._engine_s, 4),
                "queued_now": self._queue.qsize(),
                "queue_size": self._queue.maxsize,
                "max_size": self.max_size,
                "max_wait_ms": self.max_wait_s * 1000.0,
                "policy": self.policy,
            }

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("batcher queue still full at shutdown")
        self._thread.join(timeout)


# An absolute path of 2+ parts (POSIX, or Windows with a drive letter); group 1 is its
# last part. Not inside a URL or a relative path (the lookbehind).
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+([^\s/'\"]+)"
                       r"|\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)*([^\s\\'\"]+)")


def public_message(text: str, model: str | os.PathLike) -> str:
    """``text`` without absolute filesystem paths, for /api/health and /api/info (the
    page may be public, --share): the model folder's path becomes its folder name
    (``/srv/m/bundle/x.onnx`` -> ``bundle/x.onnx``), any other absolute path its
    last part."""
    p = Path(model)
    name = p.resolve().name or p.name
    for prefix in sorted({str(p.resolve()), str(p.absolute()), os.path.abspath(p)},
                         key=len, reverse=True):
        if os.path.isabs(prefix) and len(prefix) > 1:
            text = text.replace(prefix, name)
    return _ABS_PATH.sub(lambda m: m.group(1) or m.group(2), text)


class ModelHolder:
    """Loads the Translator once (background thread), warms it, then runs the batcher.

    States: ``idle`` -> ``loading`` -> ``warming`` -> ``ready``, or ``failed``
    with the error kept: ``error`` for /api/health and /api/info (no absolute
    paths: see public_message), ``error_detail`` in full for the local console/log.
    """

    def __init__(self, config: WebConfig, on_ready: Callable[["ModelHolder"], None] | None = None):
        self.config = config
        self.state = "idle"
        self.error: str | None = None           # public: no absolute paths
        self.error_detail: str | None = None    # as raised, paths included (console, log)
        self.translator: Any = None
        self.batcher: MicroBatcher | None = None
        self.load_seconds: float | None = None
        self.warmup_ms: dict[str, float] = {}
        self._on_ready = on_ready
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        """Start loading in a background thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self.state = "loading"
            self._thread = threading.Thread(target=self._load, name="facesketch-model-loader",
                                            daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the model is ready or failed; True when ready."""
        self._ready.wait(timeout)
        return self.ready

    def _load(self) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        try:
            from runtime import Translator   # torch-free unless the model is a checkpoint
            log.info("loading model %s (backend %s, device %s)", cfg.model, cfg.backend, cfg.device)
            translator = Translator.load(cfg.model, backend=cfg.backend, device=cfg.device,
                                         allow_partial=cfg.allow_partial,
                                         **({"server": cfg.server} if cfg.server else {}))
            self.state = "warming"
            if cfg.warmup:
                self._warm(translator)
            self.translator = translator
            self.batcher = MicroBatcher(translator.translate_batch, cfg.batch_max_size,
                                        cfg.batch_max_wait_ms, cfg.queue_size,
                                        cfg.batch_wait_policy)
            self.load_seconds = time.perf_counter() - t0
            self.state = "ready"
            log.info("model ready in %.1f s: backend %s", self.load_seconds,
                     getattr(translator, "backend", "?"))
        except Exception as exc:  # noqa: BLE001 - kept and reported by /api/health
            self.error_detail = f"{type(exc).__name__}: {exc}"
            self.error = public_message(self.error_detail, cfg.model)
            self.state = "failed"
            log.error("model failed to load from %s: %s", cfg.model, self.error_detail)
        finally:
            self._ready.set()
        if self.ready and self._on_ready is not None:
            self._on_ready(self)

    def _warm(self, translator: Any) -> None:
        """One batch per direction at the model's size, so first users pay no set-up."""
        size = int(getattr(translator, "image_size", 64) or 64)
        img = np.full((size, size, 3), 128, np.uint8)
        for direction in ("photo2sketch", "sketch2photo"):
            t = time.perf_counter()
            translator.translate_batch([img, img], direction=direction)
            self.warmup_ms[direction] = round((time.perf_counter() - t) * 1000.0, 2)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
