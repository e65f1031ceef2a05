"""Load test of `facesketch serve` on loopback, with the model's own latency for reference.

    python -m benchmarks.web_load --model bundles/default --clients 1,8 --seconds 15

1. The model alone: ``runtime.Translator`` in this process, ``translate`` on
   decoded images, and ``translate_batch`` at a few batch sizes (ms per image:
   does batching pay on this machine?).
2. The real server (``facesketch serve`` in a subprocess, waitress) on
   127.0.0.1 only; for each client count, N threads each with one keep-alive
   connection POST images (CUFS test photos and sketches when present, else
   synthetic faces) back to back for T seconds (and at most --max-requests in
   total). Reports requests/s, p50/p95/p99 latency, errors by kind, and the
   server's batch-size histogram for that level. The 1-client level runs in
   short rounds interleaved with the model-alone measurement, so both see the
   same background load; the check is 1-client p50 minus model-alone p50.
   Also reported: per request, the round trip minus the engine time the server
   reported for it (the web stack's own cost).

Writes JSON to benchmarks/results/ with facesketch.sysinfo.machine() and the
load average before and after (other work on the machine makes absolute times
noisy; the overhead over the model's own latency is the number to read).
Stops by itself: each level is bounded in time and count, the server is
stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"           # loopback only, by design
CUFS = Path(os.environ.get("FACESKETCH_CUFS", REPO.parent / "shared" / "data" / "cufs"))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    return {"n": len(ms), "p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2),
            "p99": round(percentile(ms, 99), 2), "mean": round(statistics.fmean(ms), 2) if ms else None,
            "min": round(min(ms), 2) if ms else None, "max": round(max(ms), 2) if ms else None}


# ------------------------------------------------------------------ inputs
def webcam_frames(n: int, width: int, height: int) -> tuple[list[tuple[str, bytes]], str]:
    """What the page's camera loop sends: JPEG frames (quality 0.9) of width x height, here
    CUFS test photos padded to the frame's aspect (a face in a room) and resized."""
    from PIL import Image
    out = []
    for i in range(1, n + 1):
        img = Image.open(CUFS / "test_photos" / f"{i}.jpg").convert("RGB")
        canvas = Image.new("RGB", (img.height * width // height, img.height), (128, 120, 110))
        canvas.paste(img, ((canvas.width - img.width) // 2, 0))
        buf = io.BytesIO()
        canvas.resize((width, height), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append((f"frame{i}.jpg", buf.getvalue()))
    return out, f"webcam-like {width}x{height} JPEG frames (CUFS test photos 1..{n} in a wider frame)"


def load_inputs(n: int, frame: str | None = None) -> tuple[list[tuple[str, bytes]], str]:
    """(name, file bytes) of test images, half photos half sketches when CUFS exists;
    ``frame`` "WxH": webcam-like frames of that size instead."""
    if frame and (CUFS / "test_photos").is_dir():
        w, h = (int(v) for v in frame.lower().split("x"))
        return webcam_frames(n, w, h)
    if (CUFS / "test_photos").is_dir():
        out = []
        for i in range(1, n // 2 + 1):
            for folder in ("test_photos", "test_sketches"):
                p = CUFS / folder / f"{i}.jpg"
                out.append((f"{folder}/{p.name}", p.read_bytes()))
        return out, f"CUFS test photos and sketches 1..{n // 2} (200x250 JPEG)"
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (250, 200, 3), dtype=np.uint8)
        if i % 2:
            arr = np.repeat(arr.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append((f"synthetic{i}.jpg", buf.getvalue()))
    return out, "synthetic 200x250 JPEG (CUFS not found)"


def random_checkpoint(size: int, blocks: int, out: Path) -> Path:
    """A random-init checkpoint of the production architecture (same speed as trained)."""
    import torch
    from training.checkpoint import model_config, save_model
    from training.networks import build_generator, init_weights
    torch.manual_seed(0)
    return save_model(out, init_weights(build_generator(blocks, 64)),
                      init_weights(build_generator(blocks, 64)), model_config(blocks, 64, size))


# ------------------------------------------------------------------ model alone
class ModelAlone:
    """The Translator in this process, on decoded arrays: the reference latency."""

    def __init__(self, model: str, backend: str, images: list[tuple[str, bytes]]):
        from facesketch.imageio import decode
        from runtime import Translator
        t0 = time.perf_counter()
        self.tr = Translator.load(model, backend=backend)
        self.load_s = time.perf_counter() - t0
        self.arrays = [decode(b) for _, b in images]
        self.i = 0
        for a in self.arrays[:4]:
            self.tr.translate(a)                              # warm up

    def run_for(self, seconds: float, min_calls: int = 5) -> list[float]:
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < min_calls:
            a = self.arrays[self.i % len(self.arrays)]
            self.i += 1
            t = time.perf_counter()
            self.tr.translate(a)
            times.append(time.perf_counter() - t)
        return times

    def batch_table(self, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
        out = {}
        for bs in batch_sizes:
            group = [self.arrays[j % len(self.arrays)] for j in range(0, 2 * bs, 2)]  # photos
            self.tr.translate_batch(group, direction="photo2sketch")
            per: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(per) < 3:
                t = time.perf_counter()
                self.tr.translate_batch(group, direction="photo2sketch")
                per.append((time.perf_counter() - t) / bs)
            out[str(bs)] = {"ms_per_image_p50": round(percentile([p * 1000 for p in per], 50), 2),
                            "calls": len(per)}
        return out

    def close(self) -> None:
        self.tr.close()


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, backend: str, port: int, threads: int, log_path: Path,
                 align: str = "auto"):
    env = dict(os.environ)
    env.pop("NGROK_AUTHTOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", model,
                             "--backend", backend, "--host", HOST, "--port", str(port),
                             "--threads", str(threads), "--align", align], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    return proc, log


def get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def wait_healthy(port: int, proc, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            status, _ = get_json(port, "/api/health", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not healthy within {seconds:.0f} s")


def multipart(name: str, data: bytes, boundary: str = "facesketchbench") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{Path(name).name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"direction\"\r\n\r\nauto" \
           f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def with_field(body: bytes, ctype: str, name: str, value: str) -> bytes:
    """A multipart body with one more form field (before the closing boundary)."""
    boundary = ctype.split("boundary=", 1)[1]
    end = f"--{boundary}--\r\n".encode()
    extra = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
             f"{value}\r\n").encode()
    return body[:-len(end)] + extra + end


def run_level(port: int, clients: int, seconds: float, max_requests: int,
              bodies: list[tuple[bytes, str]], echo_face_box: bool = False) -> dict[str, Any]:
    """``echo_face_box``: send each client's last X-Face-Box back as the page's camera
    loop does (the server then steadies the crop)."""
    faces: dict[str, int] = {}
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    server_model_ms: list[list[float]] = [[] for _ in range(clients)]
    budget = threading.Semaphore(max_requests)
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        start.wait()
        i, box = k, None
        while time.perf_counter() < stop_at[0] and budget.acquire(blocking=False):
            body, ctype = bodies[i % len(bodies)]
            if echo_face_box and box:
                body = with_field(body, ctype, "face_box", box)
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/translate", body=body,
                             headers={"Content-Type": ctype, "Accept": "image/png"})
                r = conn.getresponse()
                payload = r.read()
                dt = time.perf_counter() - t
                if r.status == 200 and payload[:8] == b"\x89PNG\r\n\x1a\n":
                    lat[k].append(dt)
                    server_model_ms[k].append(float(r.getheader("X-Latency-Ms", "nan")))
                    face = r.getheader("X-Face", "none")
                    faces[face] = faces.get(face, 0) + 1
                    box = r.getheader("X-Face-Box")
                else:
                    errors[k][f"http_{r.status}"] = errors[k].get(f"http_{r.status}", 0) + 1
            except (OSError, http.client.HTTPException) as exc:
                kind = type(exc).__name__
                errors[k][kind] = errors[k].get(kind, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
        conn.close()

    _, before = get_json(port, "/api/info")
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    _, after = get_json(port, "/api/info")
    all_lat = [x for per in lat for x in per]
    err: dict[str, int] = {}
    for e in errors:
        for k, v in e.items():
            err[k] = err.get(k, 0) + v
    b0, b1 = before["server"], after["server"]
    sizes = {k: v - b0["batch_sizes"].get(k, 0) for k, v in b1["batch_sizes"].items()
             if v - b0["batch_sizes"].get(k, 0)}
    batches = b1["batches"] - b0["batches"]
    images = b1["images"] - b0["images"]
    all_model = [m for per in server_model_ms for m in per]
    return {
        "_raw": (all_lat, all_model),
        "clients": clients, "seconds": round(wall, 2), "requests_ok": len(all_lat),
        "errors": sum(err.values()), "errors_by_kind": err,
        "requests_per_s": round(len(all_lat) / wall, 2),
        "latency_ms": summary_ms(all_lat),
        "server_reported_model_ms_p50": round(percentile(all_model, 50), 2),
        "batches": batches, "mean_batch": round(images / batches, 2) if batches else None,
        "batch_sizes": sizes, "faces": faces,
    }


def merge_levels(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's result from several short runs of it."""
    lat = [x for p in parts for x in p["_raw"][0]]
    srv = [x for p in parts for x in p["_raw"][1]]
    err: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors_by_kind"].items():
            err[k] = err.get(k, 0) + v
        for k, v in p["batch_sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    wall = sum(p["seconds"] for p in parts)
    batches = sum(p["batches"] for p in parts)
    images = sum(int(k) * v for k, v in sizes.items())
    return {"_raw": (lat, srv), "clients": parts[0]["clients"], "seconds": round(wall, 2),
            "rounds": len(parts), "requests_ok": len(lat), "errors": sum(err.values()),
            "errors_by_kind": err, "requests_per_s": round(len(lat) / wall, 2),
            "latency_ms": summary_ms(lat),
            "server_reported_model_ms_p50": round(percentile(srv, 50), 2),
            "batches": batches, "mean_batch": round(images / batches, 2) if batches else None,
            "batch_sizes": sizes,
            "faces": {f: sum(p.get("faces", {}).get(f, 0) for p in parts)
                      for f in sorted({f for p in parts for f in p.get("faces", {})})}}


# ------------------------------------------------------------------ hostile mixes
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(w: int, h: int, depth: int = 8) -> bytes:
    """A valid PNG of w x h flat gray pixels that compresses to almost nothing."""
    import struct
    import zlib
    raw = zlib.compress((b"\x00" + b"\x00" * (w * depth // 8)) * h, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))


def hostile_bodies() -> dict[str, tuple[bytes, str]]:
    """The review's attacks: a thin strip (5 x 3,000,000 pixels in ~20 KB; 8 x 3,000,000
    is refused by the pixel limit alone), a 16-bit 4898x4898 PNG (46 KB; 24 MP, over the
    pixel limit) and a 16-bit 3900x3900 PNG (15.2 MP, under it: decoded, bounded)."""
    return {"thin_png": multipart("thin.png", flat_png(5, 3_000_000)),
            "sixteen_bit_bomb": multipart("bomb.png", flat_png(4898, 4898, 16)),
            "sixteen_bit_15mp": multipart("big16.png", flat_png(3900, 3900, 16))}


# Each hostile mix comes from a loopback address of its own (Linux routes all of
# 127.0.0.0/8 to lo): the server tells clients apart by address, as it would tell a
# remote attacker from its other visitors. --attackers-share-address: all from HOST.
ATTACKER_ADDRESSES = {"thin_png": "127.0.0.2", "sixteen_bit_bomb": "127.0.0.3",
                      "sixteen_bit_15mp": "127.0.0.4", "slow": "127.0.0.5"}


def attacker(port: int, body: tuple[bytes, str], stop: threading.Event, counts: dict,
             source: str | None = None) -> None:
    """One client sending the same hostile upload in a loop until ``stop`` (never
    waiting for a Retry-After), from ``source`` (a local address) when given."""
    src = (source, 0) if source else None
    while not stop.is_set():
        conn = http.client.HTTPConnection(HOST, port, timeout=60, source_address=src)
        try:
            conn.request("POST", "/api/translate", body=body[0], headers={"Content-Type": body[1]})
            r = conn.getresponse()
            r.read()
            counts[r.status] = counts.get(r.status, 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
        finally:
            conn.close()


def slow_connections(port: int, n: int, stop: threading.Event, counts: dict,
                     source: str | None = None) -> None:
    """``n`` connections trickling a request's headers at 1 byte/s, reopened when cut off."""
    import socket
    src = (source, 0) if source else None
    socks: list = [None] * n
    while not stop.is_set():
        for i in range(n):
            try:
                if socks[i] is None:
                    socks[i] = socket.create_connection((HOST, port), timeout=5,
                                                        source_address=src)
                    socks[i].sendall(b"POST /api/translate HTTP/1.1\r\nHost: x\r\n")
                    counts["opened"] = counts.get("opened", 0) + 1
                else:
                    socks[i].sendall(b"X")
            except OSError:
                counts["cut_off"] = counts.get("cut_off", 0) + 1
                if socks[i] is not None:
                    socks[i].close()
                socks[i] = None
        stop.wait(1.0)
    for s in socks:
        if s is not None:
            s.close()


def _attack(port: int, body: tuple[bytes, str] | None, slow: int, stop, queue,
            source: str | None) -> None:
    """In a process of its own (an attacker is another client, not a thread sharing the
    measuring clients' interpreter): send ``body`` in a loop (None: hold ``slow`` slow
    connections) until ``stop``. The body is made beforehand, by the parent: making the
    PNG bombs costs seconds of CPU, which must not fall in the measured time."""
    counts: dict = {}
    ev = threading.Event()
    if body is not None:
        t = threading.Thread(target=attacker, args=(port, body, ev, counts, source),
                             daemon=True)
    else:
        t = threading.Thread(target=slow_connections, args=(port, slow, ev, counts, source),
                             daemon=True)
    t.start()
    stop.wait()
    ev.set()
    t.join(30)
    queue.put({str(k): v for k, v in counts.items()})


def run_hostile(port: int, clients: int, seconds: float, max_requests: int,
                bodies: list[tuple[bytes, str]], slow: int = 120,
                own_addresses: bool = True) -> dict[str, Any]:
    """Normal clients alone, then beside each hostile mix; their p50 and errors each time.
    ``own_addresses``: each mix from a loopback address of its own (else from HOST, like
    the normal clients)."""
    import multiprocessing as mp
    hostile = hostile_bodies()
    # quiet again at the end: how much the normal clients' own figure drifted meanwhile
    # (another job on the machine) -- the noise floor of the ratios
    mixes = ["quiet", *hostile, f"{slow}_slow_connections", "quiet_again"]
    out: dict[str, Any] = {}
    for mix in mixes:
        proc = None
        source = None
        if not mix.startswith("quiet"):
            source = ATTACKER_ADDRESSES.get(mix, ATTACKER_ADDRESSES["slow"]) if own_addresses else None
            stop, queue = mp.Event(), mp.Queue()
            proc = mp.Process(target=_attack, args=(port, hostile.get(mix), slow, stop, queue,
                                                    source), daemon=True)
            proc.start()
            time.sleep(1.5)
        print(f"{clients} normal client(s) beside: {mix} ...", flush=True)
        res = run_level(port, clients, seconds, max_requests, bodies)
        counts = {}
        if proc is not None:
            stop.set()
            counts = queue.get(timeout=60)
            proc.join(30)
        res.pop("_raw", None)
        out[mix] = {"normal_p50_ms": res["latency_ms"]["p50"], "normal_p95_ms": res["latency_ms"]["p95"],
                    "normal_requests_per_s": res["requests_per_s"], "normal_errors": res["errors"],
                    "hostile_answers": counts, "hostile_from": source or (HOST if proc else None)}
        print(f"  p50 {out[mix]['normal_p50_ms']} ms, {out[mix]['normal_requests_per_s']} req/s, "
              f"errors {res['errors']}, hostile {counts}", flush=True)
    quiet = out["quiet"]["normal_p50_ms"]
    out["checks"] = {mix: {"p50_ratio_to_quiet": round(v["normal_p50_ms"] / quiet, 2),
                           "within_2x": v["normal_p50_ms"] <= 2 * quiet,
                           "zero_errors": not v["normal_errors"]}
                     for mix, v in out.items() if not mix.startswith("quiet")}
    out["checks"]["quiet_again_ratio_to_quiet"] = round(out["quiet_again"]["normal_p50_ms"] / quiet, 2)
    return out


# ------------------------------------------------------------------ main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="bundle or checkpoint; default: a random-init checkpoint of "
                                    "--size/--blocks made in a temporary folder")
    ap.add_argument("--export", metavar="FORMATS",
                    help="when the model is a checkpoint: copy it to a temporary folder and "
                         "export a bundle of these formats (e.g. onnx,openvino) to serve instead")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--clients", default="1,8", help="comma list of concurrent clients")
    ap.add_argument("--seconds", type=float, default=15.0, help="per level")
    ap.add_argument("--max-requests", type=int, default=20000, help="per level, in total")
    ap.add_argument("--model-seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved model-alone / 1-client rounds")
    ap.add_argument("--threads", type=int, default=8, help="waitress threads")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--frame", metavar="WxH",
                    help="send webcam-like JPEG frames of this size (the page sends 512x384): "
                         "the 1-client rate is the page's webcam results per second")
    ap.add_argument("--hostile", type=int, default=0, metavar="CLIENTS",
                    help="also run CLIENTS normal clients beside each hostile mix (thin PNG, "
                         "16-bit bomb, 120 slow connections) and check their p50 and errors")
    ap.add_argument("--attackers-share-address", action="store_true",
                    help="hostile clients connect from 127.0.0.1 like the normal ones (as "
                         "before per-address accounting); default: each mix from its own "
                         "loopback address (127.0.0.2-5)")
    ap.add_argument("--align", default="auto", choices=("auto", "off"),
                    help="the server's face alignment (serve --align; default auto)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/web_load_<backend>.json)")
    ap.add_argument("--note", default="", help="free text stored with the result")
    a = ap.parse_args(argv)
    a.levels = [int(c) for c in a.clients.split(",") if c.strip()]
    if not a.levels or min(a.levels) < 1 or max(a.levels) > 64:
        ap.error("--clients: 1..64 each")
    return a


def _model(a: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    """(model path to serve, how it was made)."""
    model, note = a.model, f"given: {a.model}"
    if model is None:
        model = str(random_checkpoint(a.size, a.blocks, tmp / "ckpt"))
        note = f"random-init checkpoint, size {a.size}, {a.blocks} blocks, ngf 64"
    if a.export and not (Path(model) / "manifest.json").is_file():
        import shutil
        from export import export_bundle
        from training.checkpoint import resolve
        st = resolve(model)                   # read-only: copied, never written to
        ck = tmp / "checkpoint"
        ck.mkdir()
        shutil.copy2(st, ck / st.name)
        shutil.copy2(st.with_suffix(".json"), ck / st.with_suffix(".json").name)
        print(f"exporting {a.export} from a copy of {model} ...", flush=True)
        model = str(export_bundle(ck, tmp / "bundle", formats=a.export, speed_check=False))
        note += f"; served as a bundle exported here ({a.export})"
    return model, note


def _levels(a, port: int, alone: "ModelAlone", bodies) -> tuple[list[dict], list[float]]:
    results, model_times = [], []
    for clients in a.levels:
        if clients == 1:
            # Interleave the model alone and one web client in short rounds, so both
            # see the same background load (this machine's CPU is shared).
            print(f"1 client vs the model alone, {a.rounds} interleaved rounds of "
                  f"{a.seconds / a.rounds:.1f} s each ...", flush=True)
            parts = []
            for _ in range(a.rounds):
                model_times += alone.run_for(a.model_seconds / a.rounds)
                parts.append(run_level(port, 1, a.seconds / a.rounds,
                                       max(1, a.max_requests // a.rounds), bodies, bool(a.frame)))
            res = merge_levels(parts)
        else:
            print(f"{clients} client(s) for {a.seconds:.0f} s ...", flush=True)
            res = run_level(port, clients, a.seconds, a.max_requests, bodies, bool(a.frame))
        print(f"  {res['requests_per_s']} req/s, p50 {res['latency_ms']['p50']} ms, "
              f"p99 {res['latency_ms']['p99']} ms, errors {res['errors']}, "
              f"mean batch {res['mean_batch']}", flush=True)
        results.append(res)
    return results, model_times


def _checks(results: list[dict], model_times: list[float]) -> dict[str, Any]:
    one = next((r for r in results if r["clients"] == 1), None)
    model_p50 = round(percentile([t * 1000 for t in model_times], 50), 2) if model_times else None
    overhead = round(one["latency_ms"]["p50"] - model_p50, 2) if one and model_p50 else None
    web_only = None
    if one:
        lat, srv = one["_raw"]
        web_only = round(percentile([x * 1000 - m for x, m in zip(lat, srv)], 50), 2)
    eight = next((r for r in results if r["clients"] == 8), None)
    for r in results:
        r.pop("_raw", None)
    return {
        "model_alone_p50_ms": model_p50,
        "one_client_p50_ms": one["latency_ms"]["p50"] if one else None,
        "overhead_p50_ms_at_1_client": overhead,
        "overhead_within_20_ms": overhead is not None and overhead <= 20.0,
        "web_only_overhead_p50_ms": web_only,
        "web_only_note": "per request: round trip minus the engine time the server reported "
                         "(X-Latency-Ms) for that same request: HTTP, multipart, JPEG "
                         "decode, queue, PNG encode",
        "errors_at_8_clients": eight["errors"] if eight else None,
    }


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    from facesketch.sysinfo import machine, write_result
    tmp = tempfile.TemporaryDirectory(prefix="web_load_")
    model, model_note = _model(a, Path(tmp.name))
    images, images_note = load_inputs(a.images, a.frame)
    load_before = os.getloadavg()
    print("loading the model in this process ...", flush=True)
    alone = ModelAlone(model, a.backend, images)
    batch_table = alone.batch_table([1, 2, 4, 8], max(1.0, a.model_seconds / 4))
    tr_info = alone.tr.info()
    port = free_port()
    proc, log = start_server(model, a.backend, port, a.threads, Path(tmp.name) / "serve.log", a.align)
    hostile = None
    try:
        wait_healthy(port, proc, 300)
        _, info = get_json(port, "/api/info")
        bodies = [multipart(n, b) for n, b in images]
        run_level(port, 1, min(2.0, a.seconds), 200, bodies)         # warm the server path
        results, model_times = _levels(a, port, alone, bodies)
        if a.hostile:
            hostile = run_hostile(port, a.hostile, a.seconds, a.max_requests, bodies,
                                  own_addresses=not a.attackers_share_address)
    finally:
        alone.close()
        _stop(proc)
        log.close()
    checks = _checks(results, model_times)
    out = {
        "benchmark": "web_load",
        "model": model_note, "backend": alone.tr.backend, "image_size": alone.tr.image_size,
        "inputs": images_note,
        "server": {"host": HOST, "waitress_threads": a.threads, "backend": info.get("backend"), "align": a.align,
                   "batcher": {k: info["config"][k] for k in ("batch_max_size", "batch_max_wait_ms",
                                                              "batch_wait_policy", "queue_size")},
                   "per_client": {k: v for k, v in info["config"].items() if k.startswith("client_")}},
        "model_alone": {
            "translate_ms": summary_ms(model_times),
            "note": "Translator.translate on a decoded RGB array (detect + fit + engine + unfit), "
                    "wall clock in this process, interleaved with the 1-client rounds; no HTTP, "
                    "no JPEG decode, no PNG encode",
            "load_seconds": round(alone.load_s, 2),
            "translate_batch_photo2sketch_ms_per_image": batch_table,
            "info": tr_info,
        },
        "levels": results, "checks": checks, "hostile": hostile,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": a.note, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"web_load_{alone.tr.backend}.json"
    write_result(out, path)
    print(f"1-client p50 {checks['one_client_p50_ms']} ms vs model alone "
          f"{checks['model_alone_p50_ms']} ms: overhead {checks['overhead_p50_ms_at_1_client']} ms "
          f"(web-only {checks['web_only_overhead_p50_ms']} ms); errors at 8 clients: "
          f"{checks['errors_at_8_clients']}")
    print(f"wrote {path}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
