"""Where a model's energy at the upsampling grid's frequencies comes from.

The checkerboard measure (facesketch.metrics.checkerboard_db) looks at periods 2 and
4 along the rows, the columns and the diagonal. A dot pattern that the network prints
on its own pixel grid stays where it is when the input moves; a texture the network
draws (the spacing of its pencil strokes) moves with the face. So each CUFS test image
is translated as it is and averaged over shifted copies of the input (2x2 shifts by 0
and 2 pixels, 4x4 by 0-3, each output shifted back: "cycle spinning"): what the 4x4
average removes was locked to the grid, what survives moves with the content. The
targets (the artists' sketches, the photos) on the same grid are the reference.
With ``--swap``, the plain translation is also measured with the generator's resize
upsamplers switched to another interpolation (no retraining): energy that follows the
interpolation kernel comes from the upsampling.

    python -m benchmarks.checker_origin --model facesketch/models/default --every 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facesketch import imageio, sysinfo
from facesketch.metrics import CHECKER_PERIODS, checkerboard_parts
from training.checkpoint import load_model

RESULTS = Path(__file__).resolve().parent / "results"
SHIFTS = {"none": [(0, 0)],
          "shift_2x2": [(dy, dx) for dy in (0, 2) for dx in (0, 2)],
          "shift_4x4": [(dy, dx) for dy in range(4) for dx in range(4)]}
TERMS = [f"p{p}_{axis}" for p in CHECKER_PERIODS for axis in ("vertical", "horizontal", "diagonal")]


@torch.no_grad()
def translate_shifted(net: torch.nn.Module, square: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """The mean of ``net``'s outputs for the input shifted by each (dy, dx), shifted back
    (edges replicated), as uint8 on the input's grid."""
    size = square.shape[0]
    x = torch.from_numpy(square).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    acc = torch.zeros_like(x)
    for dy, dx in shifts:
        xp = F.pad(x, (dx, 4 - dx, dy, 4 - dy), mode="replicate")
        acc += net(xp)[..., dy:dy + size, dx:dx + size]
    y = (acc / len(shifts)).clamp(-1, 1)[0].permute(1, 2, 0).numpy()
    return ((y + 1.0) * 127.5 + 0.5).astype(np.uint8)


def set_upsampling(net: torch.nn.Module, mode: str) -> None:
    """Switch every nn.Upsample of ``net`` to ``mode`` (bilinear, bicubic, nearest)."""
    for m in net.modules():
        if isinstance(m, torch.nn.Upsample):
            m.mode, m.align_corners = mode, (None if mode == "nearest" else False)


def summarise(rows: list[list[float]]) -> dict:
    a = np.asarray(rows)
    return {"mean_db": round(float(a.mean()), 3),
            "terms_db": {t: round(float(v), 3) for t, v in zip(TERMS, a.mean(0))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="facesketch/models/default", help="checkpoint folder")
    ap.add_argument("--cufs", type=Path, default=Path("../shared/data/cufs"))
    ap.add_argument("--every", type=int, default=10, help="use every N-th test pair")
    ap.add_argument("--swap", nargs="*", default=["bicubic", "nearest"],
                    help="interpolations to swap into the resize upsamplers (none: skip)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    photos = imageio.list_images(a.cufs / "test_photos")[::a.every]
    sketches = imageio.list_images(a.cufs / "test_sketches")[::a.every]
    if not photos or len(photos) != len(sketches):
        raise SystemExit(f"no CUFS test pairs under {a.cufs}")
    torch.set_num_threads(1)
    nets, cfg = load_model(a.model)
    size = int(cfg["image_size"])
    directions = {"photo2sketch": ("G_A", photos, sketches), "sketch2photo": ("G_B", sketches, photos)}
    result = {}
    has_resize = any(isinstance(m, torch.nn.Upsample) for m in nets["G_A"].modules())
    swaps = [m for m in a.swap if has_resize]
    own = next((m.mode for m in nets["G_A"].modules() if isinstance(m, torch.nn.Upsample)), None)
    for direction, (name, inputs, targets) in directions.items():
        rows: dict[str, list[list[float]]] = {k: [] for k in (*SHIFTS, *(f"upsample_{m}" for m in swaps),
                                                                "target")}
        for src, tgt in zip(inputs, targets):
            square, box = imageio.fit_square(imageio.decode(src), size)
            for label, shifts in SHIFTS.items():
                out = translate_shifted(nets[name], square, shifts)
                rows[label].append(checkerboard_parts(imageio.inner(out, box)))
            for mode in swaps:
                set_upsampling(nets[name], mode)
                out = translate_shifted(nets[name], square, SHIFTS["none"])
                rows[f"upsample_{mode}"].append(checkerboard_parts(imageio.inner(out, box)))
                set_upsampling(nets[name], own)
            rows["target"].append(checkerboard_parts(imageio.inner(*imageio.fit_square(
                imageio.decode(tgt), size))))
        result[direction] = {k: summarise(v) for k, v in rows.items()}
        print(direction, json.dumps({k: v["mean_db"] for k, v in result[direction].items()}), flush=True)
    out = sysinfo.write_result({"benchmark": "checker_origin", "model": str(a.model),
                                "model_size": size, "pairs": len(photos), "every": a.every,
                                "model_upsampling": own,
                                "terms": TERMS, "directions": result, "machine": sysinfo.machine()},
                               a.out or RESULTS / "checker_origin.json")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
