"""A run's checkpoints: what one holds (everything needed to resume exactly), writing it
(rank 0), and resuming from it (falling back past a damaged newest state).

Functions of a training.trainer.Run: the trainer calls ``save(run, reason)`` and
``resume(run)``; ``model_config(run)`` is the JSON config the model files carry.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facesketch import sysinfo
from facesketch.config import to_dict

from . import checkpoint as ckpt
from .config import NOT_RESUMED

if TYPE_CHECKING:
    from .trainer import Run

log = logging.getLogger("facesketch.train")


def state_tensors(run: "Run") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    t: dict[str, torch.Tensor] = {}
    for name in _networks(run):
        for k, v in getattr(run, name).state_dict().items():
            t[f"{name}.{k}"] = v
    oG, mG = ckpt.flatten_optimizer("opt_G", run.opt_G)
    oD, mD = ckpt.flatten_optimizer("opt_D", run.opt_D)
    t.update(oG)
    t.update(oD)
    for name, pool in (("pool_A", run.pool_A), ("pool_B", run.pool_B)):
        if pool.images is not None and pool.count:
            t[f"{name}.images"] = pool.images[:pool.count]
    t["rng.torch"] = torch.get_rng_state()
    t["rng.data"] = run.data_gen.get_state()
    t["rng.pool"] = run.pool_gen.get_state()
    if run.device.type == "cuda":
        t["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    meta = {
        "config": to_dict(run.cfg), "epoch": run.epoch, "step_in_epoch": run.step_in_epoch,
        "samples_in_epoch": run.step_in_epoch * run.cfg.batch_size * run.world,
        "global_step": run.global_step, "world_size": run.world,
        "opt_G": mG, "opt_D": mD,
        "scaler_G": run.scaler_G.state_dict(), "scaler_D": run.scaler_D.state_dict(),
        "pool_counts": {"pool_A": run.pool_A.count, "pool_B": run.pool_B.count},
        "python_random": _py_random_state(), "numpy_random": _np_random_state(),
        "best_score": None if run.best_score == -math.inf else run.best_score,
        "best_score_on": run.best_score_on,
        "history": run.history, "precision": run.precision,
        "data": run.data_summary,
    }
    return t, meta

def _networks(run: "Run") -> tuple[str, ...]:
    """The networks a state holds: both generators and discriminators, and with --ema
    the generators' averages."""
    return ("G_A", "G_B", "D_A", "D_B") + (("ema_A", "ema_B") if run.ema_A is not None else ())


def save(run: "Run", reason: str) -> None:
    if not run.master:
        return
    t, meta = state_tensors(run)
    # After resuming past a damaged state.safetensors, the first save must not keep
    # that file as state.prev (it would replace the good one resume came from).
    damaged = getattr(run, "state_damaged", False)
    ckpt.save_state(run.out / ckpt.STATE_FILE, t, meta, keep_previous=not damaged)
    run.state_damaged = False
    ckpt.save_model(run.out, *run.published(), model_config(run))
    run.last_save = time.monotonic()
    log.info("checkpoint (%s): epoch %d step %d -> %s", reason, run.epoch, run.global_step,
             run.out / ckpt.STATE_FILE)

def model_config(run: "Run") -> dict[str, Any]:
    cfg = run.cfg
    return ckpt.model_config(
        cfg.blocks, cfg.ngf, cfg.size, cfg.arch,
        train={**to_dict(cfg), "precision_used": run.precision, "world_size": run.world,
               "device_used": str(run.device)},
        progress={"epoch": run.epoch, "global_step": run.global_step, "epochs": cfg.epochs,
                  "steps_per_epoch": run.steps_per_epoch},
        data=run.data_summary,
        detector=getattr(run, "detector", None),
        metrics={"val": run.history[-1]["val"]} if run.history and "val" in run.history[-1] else {},
        versions=sysinfo.library_versions(("facesketch", "torch", "safetensors")),
    )

def resume(run: "Run") -> None:
    # state.safetensors, or state.prev.safetensors (with a warning) if that is damaged
    newest = run.out / ckpt.STATE_FILE
    tensors, meta, path = ckpt.load_resume_state(newest)
    run.state_damaged = path != newest
    saved = meta["config"]
    saved.setdefault("arch", "reference")  # runs from before the arch option
    for key in ("size", "blocks", "ngf", "ndf", "arch"):
        if saved[key] != getattr(run.cfg, key):
            raise ckpt.CheckpointError(
                f"cannot resume: the run was started with {key}={saved[key]}, "
                f"now {getattr(run.cfg, key)}")
    now = to_dict(run.cfg)
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in sorted(saved)
               if k in now and k not in NOT_RESUMED and saved[k] != now[k]]
    if changed and run.master:
        log.info("resuming with options changed from the run's start: %s", ", ".join(changed))
    for name in _networks(run):
        net = getattr(run, name)
        sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if not sd and name.startswith("ema_"):  # the run had no --ema: start it from G
            net.load_state_dict(getattr(run, "G" + name[3:]).state_dict())
            log.info("--ema: the resumed state has no average; it starts from the generators")
            continue
        net.load_state_dict(sd)
    run.opt_G.load_state_dict(ckpt.unflatten_optimizer("opt_G", tensors, meta["opt_G"]))
    run.opt_D.load_state_dict(ckpt.unflatten_optimizer("opt_D", tensors, meta["opt_D"]))
    run.scaler_G.load_state_dict(meta["scaler_G"])
    run.scaler_D.load_state_dict(meta["scaler_D"])
    for name, pool in (("pool_A", run.pool_A), ("pool_B", run.pool_B)):
        pool.count = int(meta["pool_counts"][name])
        if pool.count:
            imgs = tensors[f"{name}.images"].to(run.device)
            pool.images = torch.zeros((pool.size, *imgs.shape[1:]), dtype=imgs.dtype,
                                      device=run.device)
            pool.images[:pool.count] = imgs
    torch.set_rng_state(tensors["rng.torch"])
    same_world = int(meta.get("world_size", 1)) == run.world
    if same_world and run.master:  # the saved generators are rank 0's; others keep their own seeds
        run.data_gen.set_state(tensors["rng.data"])
        run.pool_gen.set_state(tensors["rng.pool"])
        if "rng.cuda" in tensors and run.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], run.device)
    random.setstate(_py_random_from(meta["python_random"]))
    np.random.set_state(_np_random_from(meta["numpy_random"]))
    run.epoch = int(meta["epoch"])
    run.global_step = int(meta["global_step"])
    samples = int(meta.get("samples_in_epoch", 0))
    run.step_in_epoch = samples // (run.cfg.batch_size * run.world)
    if run.step_in_epoch >= run.steps_per_epoch:
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
    run.history = list(meta.get("history", []))
    run.best_score = -math.inf if meta.get("best_score") is None else float(meta["best_score"])
    # states from before validation at the files' size scored on the model's grid
    run.best_score_on = meta.get("best_score_on", "grid" if meta.get("best_score") is not None else None)
    if run.master:
        # Rows logged after this state was saved (then a kill -9) are about to be
        # logged again by the replayed steps: drop them so no step appears twice.
        ckpt.trim_log(run.out / "log.jsonl", run.global_step)
        log.info("resumed %s at epoch %d, step %d (global %d)%s", path, run.epoch,
                 run.step_in_epoch, run.global_step,
                 "" if same_world else f" (run had {meta.get('world_size')} processes, now "
                 f"{run.world}: data order continues, augmentation RNG reseeded)")


def _py_random_state():
    v, state, gauss = random.getstate()
    return [v, list(state), gauss]


def _py_random_from(s):
    return (s[0], tuple(s[1]), s[2])


def _np_random_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _np_random_from(s):
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])
