"""``facesketch demo`` (what ``make demo`` runs): the main job on the bundled model.

1. Takes the embedded default model (facesketch/models/default) or ``--model``.
2. Exports every format this machine can run into ``bundles/default`` -- once: the
   bundle is reused while its manifest names the same source checkpoint hash.
   Export checks every engine against PyTorch on real images: the CUFS data beside
   the project where it is there (../shared/data/cufs), ``--data DIR`` if given,
   else example inputs the demo makes itself (``make_examples``).
3. Translates the example inputs (or ``--inputs``) and prints the bench table.
4. Starts the web UI on 127.0.0.1 and prints its URL (unless ``--no-serve``).

Needs no network: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from facesketch import imageio
from facesketch.models import default_model

log = logging.getLogger("facesketch.demo")
REPO = Path(__file__).resolve().parents[1]
CUFS = REPO.parent / "shared" / "data" / "cufs"
DEFAULT_BUNDLE = Path("bundles") / "default"


def example_photo() -> np.ndarray:
    """A real face photograph that ships inside scikit-image (NASA portrait of Eileen
    Collins, public domain), cropped to the head and shoulders."""
    try:
        from skimage import data
    except ImportError as exc:
        raise FileNotFoundError(
            "no example photo: scikit-image is not installed (make install puts it in); "
            "or pass --data DIR with photos and sketches") from exc
    img = data.astronaut()  # 512x512 RGB, bundled with the package
    return np.ascontiguousarray(img[0:300, 90:330])


def make_examples(model: Path, out: Path) -> Path:
    """out/train/photos/example.png (a real photo) and out/train/sketches/example.png (the
    model's sketch of it: an image of the sketch domain as this model draws it). The
    folder has the Kaggle layout, so export reads it as --calibration."""
    from runtime import Translator
    photo = example_photo()
    (out / "train" / "photos").mkdir(parents=True, exist_ok=True)
    (out / "train" / "sketches").mkdir(parents=True, exist_ok=True)
    imageio.save_png(photo, out / "train" / "photos" / "example.png")
    sketch = Translator.load(model, backend="torch").translate(photo, direction="photo2sketch").image
    imageio.save_png(sketch, out / "train" / "sketches" / "example.png")
    return out


def example_grid(model: str | Path, out: str | Path) -> Path:
    """input | photo->sketch | sketch->photo of that sketch, for the example photo.

    Uses no CUFS image, so the figure may live in the repository (README)."""
    from runtime import Translator
    t = Translator.load(model)
    photo = example_photo()
    r = t.translate(photo, direction="photo2sketch", align="auto")   # framed as in training
    if r.alignment is not None:
        photo = r.alignment.crop
    sketch = r.image
    back = t.translate(sketch, direction="sketch2photo").image
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.save_png(np.concatenate([photo, sketch, back], axis=1), out)
    return out


def bundle_is_current(bundle: Path, model: Path) -> bool:
    from training.checkpoint import resolve, sha256_file
    mf = bundle / "manifest.json"
    if not mf.is_file():
        return False
    source = json.loads(mf.read_text()).get("source", {})
    return source.get("checkpoint_sha256") == sha256_file(resolve(model))


def run_demo(model: str | Path | None = None, bundle: str | Path = DEFAULT_BUNDLE,
             data: str | Path | None = None, inputs: list[str] | None = None,
             serve: bool = True, host: str = "127.0.0.1", port: int = 5000,
             echo: Callable[[str], None] = print) -> Path:
    from export import export_bundle
    from runtime import Translator
    from runtime.bench import format_table, run_bench

    model = Path(model) if model else default_model()
    bundle = Path(bundle)
    examples = bundle.parent / f"{bundle.name}-examples"
    echo(f"model: {model}")
    if data is None and (CUFS / "train_photos").is_dir():
        data = CUFS
    if bundle_is_current(bundle, model):
        echo(f"bundle: {bundle} is up to date with the model (delete it to export again)")
    else:
        if data is None:
            calibration = make_examples(model, examples)
            echo(f"no data folder here: checking the engines on example inputs in {calibration}")
        else:
            calibration = Path(data)
            echo(f"checking the engines on real images from {calibration}")
        echo(f"exporting every format this machine can run into {bundle} ...")
        export_bundle(model, bundle, formats="all", calibration=calibration)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, why in manifest.get("skipped", {}).items():
        echo(f"  {name}: skipped ({why})")

    # Translate the example inputs (or the user's files) once, as a user would.
    files = [Path(p) for p in inputs] if inputs else []
    if not files:
        if data is not None and (Path(data) / "test_photos").is_dir():
            files = [Path(data) / "test_photos" / "1.jpg", Path(data) / "test_sketches" / "1.jpg"]
        else:
            if not (examples / "train" / "photos" / "example.png").is_file():
                make_examples(model, examples)
            files = [examples / "train" / "photos" / "example.png",
                     examples / "train" / "sketches" / "example.png"]
    translator = Translator.load(bundle)
    out_dir = bundle.parent / f"{bundle.name}-demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        r = translator.translate(f, align="auto")
        target = out_dir / f"{f.parent.name}_{f.stem}_{r.direction}.png"
        imageio.save_png(r.image, target)
        echo(f"  {f} -> {target}  ({r.domain} detected, {r.confidence:.2f}; face: {r.face}; "
             f"{r.backend}, {r.latency_ms:.0f} ms)")

    result = run_bench(bundle, batch_sizes=(1, 8), runs=10, json_out=None, echo=lambda s: None)
    echo(format_table(result))
    if serve:
        from webui.config import WebConfig
        from webui.serve import serve as serve_web
        serve_web(WebConfig(model=str(bundle)), host=host, port=port, threads=8, share=False)
    return bundle
