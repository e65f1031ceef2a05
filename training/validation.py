"""Per-epoch side effects of a run (rank 0): validation on the held-back pairs, sample
grids, the best/ checkpoint, and the detector refit at the end.

Functions of a training.trainer.Run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import state
from .amp import autocast_ctx
from .data import to_float, to_uint8

if TYPE_CHECKING:
    from .data import Domain
    from .trainer import Run

log = logging.getLogger("facesketch.train")


@torch.no_grad()
def translate_u8(run: "Run", net: nn.Module, u8: torch.Tensor) -> torch.Tensor:
    x = to_float(F.interpolate(u8.float(), size=(run.cfg.size,) * 2, mode="bicubic",
                               antialias=True).clamp(0, 255).round().to(torch.uint8))
    with autocast_ctx(run.device, run.precision):
        y = net(x)
    return to_uint8(y), to_uint8(x)

def load_native_pairs(held_A: "Domain", held_B: "Domain") -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-back (photo, sketch) pairs decoded again from their files, at their own
    size: the test protocol's inputs and targets (``facesketch evaluate``), not the
    training squares (resampled to the load size, then again to the model's)."""
    from facesketch.imageio import decode
    return [(decode(Path(held_A.folder) / n), decode(Path(held_B.folder) / n))
            for n in held_A.names if n in held_B.names]


@torch.no_grad()
def translate_native(run: "Run", net: nn.Module, rgb: np.ndarray) -> np.ndarray:
    """``rgb`` translated as the runtime does: fitted into the model's square, translated,
    and the square's content brought back to ``rgb``'s size."""
    from facesketch import imageio
    square, fit = imageio.fit_square(rgb, run.cfg.size)
    x = to_float(torch.from_numpy(square).permute(2, 0, 1)[None].to(run.device))
    with autocast_ctx(run.device, run.precision):
        y = net(x)
    return imageio.unfit(to_uint8(y)[0].permute(1, 2, 0).cpu().numpy(), fit)


def native_scores(run: "Run", G_A: nn.Module, G_B: nn.Module) -> dict[str, float]:
    """FSIM and SSIM (on luma, as evaluate scores sketches) of the held-back pairs
    translated at their own size, as ``facesketch evaluate`` scores the test set."""
    from facesketch.metrics import fsim, ssim, to_gray
    rows = []
    for photo, sketch in run.held_native:
        fake_s, real_s = to_gray(translate_native(run, G_A, photo)), to_gray(sketch)
        fake_p, real_p = to_gray(translate_native(run, G_B, sketch)), to_gray(photo)
        rows.append((fsim(fake_s, real_s), fsim(fake_p, real_p), ssim(fake_s, real_s), ssim(fake_p, real_p)))
    m = np.mean(rows, axis=0)
    return {"native_fsim_photo2sketch": float(m[0]), "native_fsim_sketch2photo": float(m[1]),
            "native_ssim_photo2sketch": float(m[2]), "native_ssim_sketch2photo": float(m[3])}


@torch.no_grad()
def validate(run: "Run") -> dict[str, float | str]:
    """FSIM and SSIM of translations of held-back paired images against their partners:
    on the model's grid (the stored training squares), and where the files can be read
    again, at their own size as the test set is scored; ``score`` (what picks best/) is
    the mean FSIM of the two directions at their own size when there, else on the grid."""
    from facesketch.metrics import fsim, ssim
    pairs = [n for n in run.held_A.names if n in run.held_B.names]
    if not pairs:
        return {}
    ia = [run.held_A.names.index(n) for n in pairs]
    ib = [run.held_B.names.index(n) for n in pairs]
    G_A, G_B = run.published()
    for net in (G_A, G_B):
        net.eval()
    fake_B, _ = translate_u8(run, G_A, run.held_A.images[ia])
    fake_A, _ = translate_u8(run, G_B, run.held_B.images[ib])
    _, real_B = translate_u8(run, nn.Identity(), run.held_B.images[ib])
    _, real_A = translate_u8(run, nn.Identity(), run.held_A.images[ia])
    native = native_scores(run, G_A, G_B) if run.held_native else {}
    for net in (G_A, G_B):
        net.train()
    hwc = lambda t: t.permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    p2s = float(np.mean([ssim(a, b) for a, b in zip(hwc(fake_B), hwc(real_B))]))
    s2p = float(np.mean([ssim(a, b) for a, b in zip(hwc(fake_A), hwc(real_A))]))
    f_p2s = float(np.mean([fsim(a, b) for a, b in zip(hwc(fake_B), hwc(real_B))]))
    f_s2p = float(np.mean([fsim(a, b) for a, b in zip(hwc(fake_A), hwc(real_A))]))
    # the score that picks best/: FSIM, the figure the face-sketch literature reports,
    # at the test protocol's size when the files could be read again
    score = ((native["native_fsim_photo2sketch"] + native["native_fsim_sketch2photo"]) / 2
             if native else (f_p2s + f_s2p) / 2)
    return {"ssim_photo2sketch": p2s, "ssim_sketch2photo": s2p, "fsim_photo2sketch": f_p2s,
            "fsim_sketch2photo": f_s2p, **native, "score": score,
            "score_on": "native" if native else "grid", "pairs": len(pairs)}

@torch.no_grad()
def sample_grid(run: "Run", path: Path, k: int = 4) -> None:
    """Rows: input | translated | reconstructed, for k held-back photos and sketches."""
    from PIL import Image
    rows = []
    G_A, G_B = run.published()
    for dom, fwd, back in ((run.held_A, G_A, G_B), (run.held_B, G_B, G_A)):
        if len(dom) == 0:
            continue
        for net in (fwd, back):
            net.eval()
        y, x = translate_u8(run, fwd, dom.images[:k])
        z, _ = translate_u8(run, back, y)
        for net in (fwd, back):
            net.train()
        for i in range(x.shape[0]):
            rows.append(torch.cat([x[i], y[i], z[i]], dim=2))
    if not rows:
        return
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)

def end_of_epoch(run: "Run", losses: dict[str, float], seconds: float) -> None:
    val = validate(run)
    entry = {"epoch": run.epoch, "global_step": run.global_step, "seconds": round(seconds, 2),
             "lr": run.opt_G.param_groups[0]["lr"], "losses": losses}
    if val:
        entry["val"] = val
    run.history.append(entry)
    sample_grid(run, run.out / "samples" / f"epoch_{run.epoch:03d}.png")
    plot_losses(run.out / "log.jsonl", run.out / "losses.png")
    if val and val["score_on"] != run.best_score_on:  # scores on another basis do not compare
        if run.best_score_on is not None:
            log.info("validation is now scored on %s, best/ so far on %s: best/ restarts",
                     val["score_on"], run.best_score_on)
        run.best_score, run.best_score_on = -math.inf, val["score_on"]
    if val and val["score"] > run.best_score:
        run.best_score = val["score"]
        ckpt.save_model(run.out / "best", *run.published(), state.model_config(run))
        log.info("epoch %d: validation score %.4f is the best so far -> %s", run.epoch,
                 val["score"], run.out / "best")

def fit_detector(run: "Run") -> bool:
    """Refit the photo/sketch detector on this run's training images."""
    if not run.cfg.fit_detector:
        return False
    from .detector import fit_detector
    hwc = lambda d: d.images.permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    run.detector = fit_detector(hwc(run.train_A), hwc(run.train_B))
    log.info("domain detector refit on %d photos and %d sketches", len(run.train_A),
             len(run.train_B))
    return True


def plot_losses(log_path: Path, out: Path) -> None:
    if not log_path.is_file():
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "losses" in r]
    if not rows:
        return
    steps = [r["global_step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in ("G", "cycle_A", "cycle_B", "pair_A", "pair_B"):
        if name in rows[-1]["losses"]:
            axes[0].plot(steps, [r["losses"].get(name, float("nan")) for r in rows], label=name)
    for name in ("D_A", "D_B", "G_adv_A", "G_adv_B"):
        axes[1].plot(steps, [r["losses"][name] for r in rows], label=name)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
