"""Package a trained run as the embedded default model (fp16, detector, model card).

    python -m training.package runs/cufs128 [--eval benchmarks/results/eval_default.json]

Takes the run's ``best/`` generators (chosen by validation on held-back training
pairs, never by the test set), refits the photo/sketch detector on the run's
training images if the run has none, and writes fp16 safetensors + JSON +
MODEL_CARD.md to facesketch/models/default (well under 20 MB).
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

from . import checkpoint as ckpt
from .data import load_size_for

TERMS = ("Trained on CUFS (CUHK Face Sketch database, Wang & Tang, TPAMI 2009), released by the "
         "CUHK Multimedia Lab for non-commercial research use; the AR and XM2VTS photos carry "
         "their own database licences. Use this model for non-commercial research only.")


def refit_detector(cfg: dict[str, Any]) -> dict[str, Any]:
    from runtime.domain import fit_detector
    data = cfg.get("data") or {}
    size = load_size_for(int(cfg["image_size"]))
    held = set(data.get("held_out", []))
    arrays = []
    for key in ("photos", "sketches"):
        arr, names, _ = load_folder(data[key], size)
        keep = [i for i, n in enumerate(names) if n not in held]
        arrays.append(arr[keep])
    return fit_detector(arrays[0], arrays[1])


def model_card(cfg: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    tr, data, prog = cfg.get("train", {}), cfg.get("data", {}), cfg.get("progress", {})
    lines = [
        "# facesketch default model", "",
        f"CycleGAN ResnetGenerator ({cfg['arch']['blocks']} blocks, ngf {cfg['arch']['ngf']}) at "
        f"{cfg['image_size']}x{cfg['image_size']}; G_A = photo -> sketch, G_B = sketch -> photo. "
        "Weights stored as fp16 safetensors.", "",
        "## Data", "",
        f"- {data.get('train_photos')} photos and {data.get('train_sketches')} sketches of CUFS "
        f"train, used unpaired ({len(data.get('held_out', []))} pairs held back for validation).",
        "- The CUFS test set was used only for the evaluation below, never for model selection.", "",
        "## Schedule and hardware", "",
        f"- {cfg.get('card', {}).get('epochs_trained') or prog.get('epochs')} epochs trained of "
        f"{prog.get('steps_per_epoch')} steps (constant LR for the first half of the schedule, then "
        f"linear decay); the packaged generators are those after global step {prog.get('global_step')}, "
        "chosen by validation SSIM on the held-back pairs (history below).",
        f"- Batch {tr.get('batch_size')}, Adam {tr.get('lr')} (0.5, 0.999), LSGAN, cycle x10, "
        "identity x5, 50-image pools, precision " f"{tr.get('precision_used')}, device {tr.get('device_used')}.",
        f"- Training machine: {cfg.get('card', {}).get('machine', 'see card.machine')}; "
        f"training time {cfg.get('card', {}).get('training_hours', '?')} h.", "",
    ]
    if evaluation:
        from facesketch.evaluate import markdown
        lines += ["## Metrics (CUFS test set)", "", markdown(evaluation).strip(), ""]
    val = cfg.get("metrics", {}).get("val")
    if val:
        lines += [f"Validation (held-back train pairs, 128x128 canvas): SSIM photo->sketch "
                  f"{val['ssim_photo2sketch']:.4f}, sketch->photo {val['ssim_sketch2photo']:.4f}.", ""]
    hist = cfg.get("card", {}).get("validation_history") or []
    if hist:
        lines += ["Validation history (epoch: learning rate, SSIM photo->sketch / sketch->photo; "
                  "the schedule was lengthened by resuming, so the rate is not monotone): " + "; ".join(
            f"{h['epoch'] + 1}: {h.get('lr') or 0:.1e}, {h['ssim_photo2sketch']:.3f} / {h['ssim_sketch2photo']:.3f}"
            for h in hist if "ssim_photo2sketch" in h) + ".", ""]
    lines += ["## Terms", "", TERMS, ""]
    return "\n".join(lines)


def package_model(run: str | Path, out: str | Path = DEFAULT_MODEL,
                  evaluation: dict[str, Any] | None = None,
                  training_hours: float | None = None) -> Path:
    """training_hours: wall-clock hours, where the run's own epoch timings miss time
    (epochs measured only from their last resume)."""
    run = Path(run)
    src = run / "best" if (run / "best" / ckpt.MODEL_FILE).is_file() else run
    nets, cfg = ckpt.load_model(src)
    if not cfg.get("detector"):
        cfg["detector"] = refit_detector(cfg)
    hist = []
    state = run / ckpt.STATE_FILE
    if state.is_file():
        hist = ckpt.load_state(state)[1].get("history", [])
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
    (out / "MODEL_CARD.md").write_text(model_card(cfg, evaluation))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (its best/ checkpoint is packaged)")
    p.add_argument("--out", default=str(DEFAULT_MODEL))
    p.add_argument("--eval", help="evaluation JSON report to put in the model card")
    p.add_argument("--training-hours", type=float, help="wall-clock training time to report")
    a = p.parse_args(argv)
    ev = json.loads(Path(a.eval).read_text()) if a.eval else None
    out = package_model(a.run, a.out, ev, a.training_hours)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"packaged {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
