"""Training throughput of facesketch's own trainer on real CUFS images.

Times real training steps (``training.trainer.Run.train_step``: both generators,
both discriminators, Adam, history pools) and reports it/s, images/s, FLOPs per
step counted with torch.utils.flop_counter, achieved GFLOP/s, and that figure as
a share of the machine's fp32 (and, on GPUs, bf16) matmul throughput measured
in the same run. Measurement is interleaved in rounds (matmul, steps, matmul,
steps ...) so both see the same load on a shared machine; the reported ratio is
the median of the per-round ratios.

    python -m benchmarks.train_throughput --device cpu --batch-size 1 --json OUT
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from facesketch import sysinfo
from training.config import TrainConfig
from training.trainer import Run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cufs"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best observed dense GEMM FLOP/s for ``dtype`` on ``device``."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 1
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


def measure(cfg: TrainConfig, iters: int, warmup: int, rounds: int) -> dict:
    run = Run(cfg)
    run.load_data()
    run.build()
    run.wrap()
    dev = run.device
    order_a = run.epoch_order(0, len(run.train_A))
    order_b = run.epoch_order(0, len(run.train_B))
    step = 0

    def one() -> None:
        nonlocal step
        k = step % run.steps_per_epoch
        run.train_step(run.batch(run.train_A, order_a, k), run.batch(run.train_B, order_b, k))
        step += 1

    for _ in range(warmup):  # includes torch.compile / cudnn autotuning
        one()
    sync(dev)
    with FlopCounterMode(display=False) as fc:
        one()
    flops = fc.get_total_flops()
    per_round = max(1, iters // rounds)
    rows = []
    for _ in range(rounds):
        peak32 = matmul_peak(dev, torch.float32)
        sync(dev)
        t = time.perf_counter()
        for _ in range(per_round):
            one()
        sync(dev)
        dt = time.perf_counter() - t
        rows.append({"peak_fp32": peak32, "seconds": dt, "iters": per_round})
    its = [r["iters"] / r["seconds"] for r in rows]
    achieved = [flops * i for i in its]
    res = {
        "config": {"device": str(dev), "size": cfg.size, "blocks": cfg.blocks,
                   "batch_size": cfg.batch_size, "precision": run.precision,
                   "compile": cfg.compile, "channels_last": run.channels_last,
                   "threads": torch.get_num_threads()},
        "it_s": statistics.median(its),
        "images_s": statistics.median(its) * cfg.batch_size,
        "flops_per_step": flops,
        "achieved_gflop_s": statistics.median(achieved) / 1e9,
        "matmul_fp32_gflop_s": statistics.median(r["peak_fp32"] for r in rows) / 1e9,
        "share_of_fp32_matmul_peak": statistics.median(a / r["peak_fp32"] for a, r in zip(achieved, rows)),
        "rounds": rows,
    }
    if dev.type == "cuda":
        bf16 = matmul_peak(dev, torch.bfloat16)
        res["matmul_bf16_tflop_s"] = bf16 / 1e12
        res["share_of_bf16_matmul_peak"] = res["achieved_gflop_s"] * 1e9 / bf16
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--batch-size", default="1", help="comma list, e.g. 1,8,32")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--compile", default="off", choices=("off", "on", "both"))
    p.add_argument("--channels-last", default="auto", choices=("auto", "off", "on", "both"),
                   help="memory format (auto: the trainer's default, on for CUDA only)")
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="output JSON (default benchmarks/results/train_<device>.json)")
    a = p.parse_args(argv)
    if not (Path(a.data) / "train_photos").is_dir():
        p.error(f"no CUFS data at {a.data} (this benchmark times training on real images)")
    results = []
    compiles = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    layouts = {"auto": [None], "off": [False], "on": [True], "both": [False, True]}[a.channels_last]
    for bs in [int(b) for b in a.batch_size.split(",")]:
        for comp, cl in [(c, m) for c in compiles for m in layouts]:
            cfg = TrainConfig(out="/tmp/facesketch-bench", data=a.data, size=a.size, blocks=a.blocks,
                              batch_size=bs, device=a.device, precision=a.precision, compile=comp,
                              channels_last=cl, progress=False, holdout=0,
                              max_images=max(32, 2 * bs), fit_detector=False)
            r = measure(cfg, a.iters, a.warmup, a.rounds)
            results.append(r)
            c = r["config"]
            print(f"batch {bs:4d} {c['precision']:5s} compile={comp!s:5s} "
                  f"channels_last={c['channels_last']!s:5s} {r['it_s']:8.2f} it/s "
                  f"{r['images_s']:9.1f} img/s  {r['flops_per_step'] / 1e9:7.1f} GFLOP/step  "
                  f"{r['achieved_gflop_s']:8.1f} GFLOP/s = {r['share_of_fp32_matmul_peak']:.2f} "
                  f"of fp32 matmul ({r['matmul_fp32_gflop_s']:.0f} GFLOP/s)"
                  + (f", {r['share_of_bf16_matmul_peak']:.3f} of bf16 peak" if "share_of_bf16_matmul_peak" in r else ""),
                  flush=True)
    out = Path(a.json or REPO / "benchmarks" / "results" / f"train_{a.device}.json")
    sysinfo.write_result({"benchmark": "train_throughput", "machine": sysinfo.machine(),
                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "results": results}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
