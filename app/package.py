"""Package a trained run as the embedded default model (fp16, detector, model card).

    python -m app.package runs/cufs128 [--eval benchmarks/results/eval_default.json]

Takes the run's ``best/`` generators (chosen by validation on held-back training
pairs, never by the test set), refits the photo/sketch detector on the run's
training images if the run has none, and writes fp16 safetensors + JSON +
MODEL_CARD.md to facesketch/models/default (at most 32 MB).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from facesketch import sysinfo
from facesketch.imageio import load_folder
from facesketch.models import DEFAULT_MODEL

from training import checkpoint as ckpt
from training.data import load_size_for

TERMS = ("Trained on CUFS (CUHK Face Sketch database, Wang & Tang, TPAMI 2009), released by the "
         "CUHK Multimedia Lab for non-commercial research use; the AR and XM2VTS photos carry "
         "their own database licences. Use this model for non-commercial research only.")


def refit_detector(cfg: dict[str, Any]) -> dict[str, Any]:
    from training.detector import fit_detector
    data = cfg.get("data") or {}
    size = load_size_for(int(cfg["image_size"]))
    held = set(data.get("held_out", []))
    arrays = []
    for key in ("photos", "sketches"):
        arr, names, _ = load_folder(data[key], size)
        keep = [i for i, n in enumerate(names) if n not in held]
        arrays.append(arr[keep])
    return fit_detector(arrays[0], arrays[1])


def _recipe(tr: dict[str, Any], data: dict[str, Any]) -> str:
    lc = tr.get("lambda_cycle", 10.0)
    parts = [f"LSGAN x{tr.get('lambda_gan', 1.0):g}, cycle x{lc:g}"]
    if tr.get("lambda_identity"):
        parts.append(f"identity x{lc * tr['lambda_identity']:g}")
    if data.get("train_pairs"):
        parts.append(f"paired L1 x{tr.get('lambda_pair', 10.0):g} on the "
                     f"{data['train_pairs']} pairs")
    if tr.get("lambda_pair_grad") and data.get("train_pairs"):
        parts.append(f"paired gradient L1 x{tr['lambda_pair_grad']:g}")
    if tr.get("lambda_pair_fsim") and data.get("train_pairs"):
        how = f" on images blurred (Gaussian sigma {tr['fsim_blur']:g} px)" if tr.get("fsim_blur") else ""
        if tr.get("fsim_pool", 1) > 1:
            how += f", maps max-pooled over {tr['fsim_pool']}x{tr['fsim_pool']} (shift-tolerant)"
        parts.append(f"paired FSIM loss (1 - FSIM){how} x{tr['lambda_pair_fsim']:g}")
    if tr.get("lambda_cross"):
        parts.append(f"cross-hatch loss x{tr['lambda_cross']:g}")
    if tr.get("lambda_tensor"):
        parts.append(f"structure-tensor loss x{tr['lambda_tensor']:g}")
    if tr.get("lambda_fm") and data.get("train_pairs"):
        parts.append(f"discriminator feature matching x{tr['lambda_fm']:g} on the pairs")
    if tr.get("lambda_spectral"):
        vs = ("each translation's partner (ring pinned)" if tr.get("spectral_ring") == "pinned"
              else "the real images'")
        parts.append(f"spectral loss (checkerboard terms above {vs}) x{tr['lambda_spectral']:g}")
    if tr.get("lambda_shift"):
        parts.append(f"shift-consistency loss x{tr['lambda_shift']:g}")
    if tr.get("ema"):
        parts.append(f"generator weights averaged (EMA, decay {tr['ema']:g})")
    if tr.get("cycle_noise"):
        parts.append(f"noise std {tr['cycle_noise']:g} before reconstruction")
    return ", ".join(parts)


def model_card(cfg: dict[str, Any], evaluation: dict[str, Any] | None,
               notes: str = "") -> str:
    tr, data, prog = cfg.get("train", {}), cfg.get("data", {}), cfg.get("progress", {})
    up = cfg["arch"].get("upsample", "transpose")
    up_text = {"resize": "bilinear 2x resize + 3x3 conv upsampling (no checkerboard)",
               "bicubic": "bicubic 2x resize + 3x3 conv upsampling (no checkerboard, no "
                          "period-2 kinks)"}.get(up, "ConvTranspose upsampling (the reference layout)")
    pairs = data.get("train_pairs") or 0
    lines = [
        "# facesketch default model", "",
        f"CycleGAN ResnetGenerator ({cfg['arch']['blocks']} blocks, ngf {cfg['arch']['ngf']}, "
        f"{up_text}) at {cfg['image_size']}x{cfg['image_size']}; G_A = photo -> sketch, "
        "G_B = sketch -> photo. Weights stored as fp16 safetensors.", "",
        "## Data", "",
        f"- {data.get('train_photos')} photos and {data.get('train_sketches')} sketches of CUFS "
        + (f"train, {pairs} of them paired by file name (semi-supervised: the paired L1 loss "
           "beside the CycleGAN losses)" if pairs else "train, used unpaired")
        + f" ({len(data.get('held_out', []))} pairs held back for validation).",
        "- The CUFS test set was used only for the evaluation below, never for model selection.", "",
        "## Schedule and hardware", "",
        f"- {cfg.get('card', {}).get('epochs_trained') or prog.get('epochs')} epochs trained of "
        f"{prog.get('steps_per_epoch')} steps (constant LR for the first half of the schedule, then "
        f"linear decay); the packaged generators are those after global step {prog.get('global_step')}, "
        "chosen by validation on the held-back pairs (history below).",
        f"- Batch {tr.get('batch_size')}, Adam {tr.get('lr')} (0.5, 0.999), {_recipe(tr, data)}, "
        f"{tr.get('pool_size', 50)}-image pools, precision {tr.get('precision_used')}, device "
        f"{tr.get('device_used')}.",
        f"- Training machine: {cfg.get('card', {}).get('machine', 'see card.machine')}; "
        f"training time {cfg.get('card', {}).get('training_hours', '?')} h.", "",
    ]
    other = cfg.get("sketch2photo_from")
    if other:
        otr = other.get("train", {})
        lines += [f"- The sketch -> photo generator (G_B) comes from another fine-tune of the same "
                  f"network, {other['model']}: Adam {otr.get('lr')}, {_recipe(otr, data)}, "
                  f"{otr.get('epochs')} epochs; G_A and everything above are from the run named "
                  "in the config.", ""]
    if notes:
        lines += [notes.strip(), ""]
    if evaluation:
        from .evaluate import markdown
        lines += ["## Metrics (CUFS test set)", "", markdown(evaluation).strip(), ""]
    hist = [h for h in cfg.get("card", {}).get("validation_history") or [] if "ssim_photo2sketch" in h]
    if hist:
        size = cfg["image_size"]
        native = all("native_fsim_photo2sketch" in h for h in hist)
        where = "at the files' own size, as the test set is scored" if native else f"{size}x{size} canvas"
        key = "native_fsim" if native else "fsim"
        lines += [f"Validation history on the held-back train pairs ({where}; epoch: "
                  "learning rate, FSIM photo->sketch / sketch->photo where measured, else SSIM): "
                  + "; ".join(
                      f"{h['epoch'] + 1}: {h.get('lr') or 0:.1e}, "
                      + (f"FSIM {h[key + '_photo2sketch']:.3f} / {h[key + '_sketch2photo']:.3f}"
                         if "fsim_photo2sketch" in h else
                         f"SSIM {h['ssim_photo2sketch']:.3f} / {h['ssim_sketch2photo']:.3f}")
                      for h in hist) + ".", ""]
    lines += ["## Terms", "", TERMS, ""]
    return "\n".join(lines)


def package_model(run: str | Path, out: str | Path = DEFAULT_MODEL,
                  evaluation: dict[str, Any] | None = None,
                  training_hours: float | None = None, notes: str = "",
                  detector: str = "run", gray: tuple[str, ...] | list[str] = (),
                  sketch2photo_from: str | Path | None = None) -> Path:
    """training_hours: wall-clock hours, where the run's own epoch timings miss time
    (epochs measured only from their last resume). ``sketch2photo_from``: another run or
    model of the same network whose sketch -> photo generator (G_B) replaces this run's;
    the two directions never meet at inference, so each can come from the fine-tune
    that drew it best (recorded in the config and the card)."""
    run = Path(run)
    nets, cfg = ckpt.load_model(_best(run))
    if sketch2photo_from is not None:
        other_nets, other = ckpt.load_model(_best(Path(sketch2photo_from)))
        if other["arch"] != cfg["arch"] or other["image_size"] != cfg["image_size"]:
            raise ValueError(
                f"--sketch2photo-from {sketch2photo_from}: its network ({other['arch']}, "
                f"{other['image_size']}px) differs from {run}'s ({cfg['arch']}, "
                f"{cfg['image_size']}px); both generators must run as one model")
        nets["G_B"] = other_nets["G_B"]
        # a packaged model whose G_B came from elsewhere passes on where it came from
        cfg["sketch2photo_from"] = other.get("sketch2photo_from") or {
            "model": str(sketch2photo_from), "train": other.get("train", {}),
            "metrics": other.get("metrics", {})}
    from facesketch.formats import DIRECTIONS
    bad = [d for d in gray if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"--gray takes {' or '.join(DIRECTIONS)}, got {', '.join(bad)}")
    if gray:
        cfg["postprocess"] = {d: "gray" for d in gray}
    if detector == "builtin":     # the built-in fit: CUFS train + in-the-wild FS2K photos
        from facesketch.domain import DEFAULT_PARAMS
        cfg["detector"] = DEFAULT_PARAMS
    elif not cfg.get("detector"):
        cfg["detector"] = refit_detector(cfg)
    hist = []
    state = run / ckpt.STATE_FILE
    if state.is_file():
        hist = ckpt.load_resume_state(state)[1].get("history", [])
    cfg["card"] = {
        "machine": f"{sysinfo.cpu_model()} ({sysinfo.machine()['cores']} cores)"
        if "cpu" in cfg.get("train", {}).get("device_used", "cpu") else "GPU",
        "training_hours": training_hours if training_hours is not None
        else round(sum(h.get("seconds", 0) for h in hist) / 3600, 2),
        "epochs_trained": len(hist),
        "validation_history": [{"epoch": h["epoch"], "lr": h.get("lr"), **h.get("val", {})} for h in hist],
        "terms": TERMS,
        "packaged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if evaluation:
        cfg["metrics"]["test"] = {k: evaluation[k] for k in ("metrics", "input_vs_target", "detector",
                                                             "anchors", "data") if k in evaluation}
    out = Path(out)
    ckpt.save_model(out, nets["G_A"], nets["G_B"], cfg, dtype=torch.float16)
    (out / "MODEL_CARD.md").write_text(model_card(cfg, evaluation, notes))
    return out


def _best(run: Path) -> Path:
    """A run's best/ checkpoint where it has one, else the folder itself (a model)."""
    return run / "best" if (run / "best" / ckpt.MODEL_FILE).is_file() else run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (its best/ checkpoint is packaged)")
    p.add_argument("--out", default=str(DEFAULT_MODEL))
    p.add_argument("--eval", help="evaluation JSON report to put in the model card")
    p.add_argument("--training-hours", type=float, help="wall-clock training time to report")
    p.add_argument("--notes", help="a Markdown file of notes for the model card (size chosen, why)")
    p.add_argument("--gray", action="append", default=[], metavar="DIRECTION",
                   help="make this direction's outputs grayscale at inference (e.g. photo2sketch "
                        "when the sketches are pencil drawings); recorded in the model config")
    p.add_argument("--detector", choices=("run", "builtin"), default="run",
                   help="photo/sketch detector to carry: the run's own fit (default) or the "
                        "built-in one (fitted on CUFS train and in-the-wild FS2K photos too)")
    p.add_argument("--sketch2photo-from", metavar="RUN",
                   help="take the sketch -> photo generator (G_B) from this run or model (same "
                        "network) instead of RUN's")
    a = p.parse_args(argv)
    ev = json.loads(Path(a.eval).read_text()) if a.eval else None
    notes = Path(a.notes).read_text() if a.notes else ""
    out = package_model(a.run, a.out, ev, a.training_hours, notes, a.detector, a.gray,
                        a.sketch2photo_from)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"packaged {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
