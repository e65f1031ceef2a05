"""What every exporter gets: the checkpoint's generators, real calibration and
parity images per input domain, torch fp32 reference outputs, and the fp32 ONNX
(built once per direction and shared by the ONNX-derived formats)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesketch import imageio
from facesketch.formats import DIRECTION_GENERATOR, FORMATS, SOURCE_DOMAIN

log = logging.getLogger("facesketch.export")
PARITY_IMAGES = 8
ONNX_INPUT, ONNX_OUTPUT = "input", "output"


class ExportError(RuntimeError):
    """Export failed; the message names the format, direction and cause."""


class ParityError(ExportError):
    """An exported file disagrees with the PyTorch fp32 output beyond its format's floor."""


class FormatSkipped(Exception):
    """A format cannot be built here (package or hardware missing); the message says why."""


# ------------------------------------------------------------------ calibration images
def _resolve_recorded(folder: str, checkpoint: Path) -> Path | None:
    """A data folder recorded in a checkpoint: as given, else relative to the checkpoint's parents."""
    p = Path(folder).expanduser()
    if p.is_absolute():
        return p if p.is_dir() else None
    for base in [Path.cwd(), *list(checkpoint.parent.parents)[:5], checkpoint.parent]:
        cand = base / p
        if cand.is_dir():
            return cand.resolve()
    return None


def calibration_folders(cfg: dict[str, Any], checkpoint: Path,
                        calibration: str | os.PathLike | None) -> tuple[dict[str, Path], str]:
    """{'photo': folder, 'sketch': folder} and a note saying where they came from."""
    if calibration is not None:
        root = Path(calibration)
        if not root.is_dir():
            raise ExportError(f"--calibration {root} is not a folder")
        from training.data import DataError, detect_layout
        try:
            lay = detect_layout(root)
            return {"photo": lay.photos, "sketch": lay.sketches}, f"--calibration {root} ({lay.name} layout)"
        except DataError:
            if not imageio.list_images(root):
                raise ExportError(f"--calibration {root} holds no images and is no known layout "
                                  "(photos and sketches folders)") from None
            log.warning("--calibration %s is a single folder: its images calibrate and check "
                        "both directions", root)
            return {"photo": root, "sketch": root}, f"--calibration {root} (one folder, both directions)"
    data = cfg.get("data") or {}
    found, missing = {}, []
    for domain, key in (("photo", "photos"), ("sketch", "sketches")):
        rec = data.get(key)
        if not rec:
            continue
        p = _resolve_recorded(str(rec), checkpoint)
        if p is None:
            missing.append(f"data.{key} = {rec}")
        else:
            found[domain] = p
    if len(found) == 2:
        return found, "the checkpoint's training data (model.json data.photos/data.sketches)"
    if missing:
        raise ExportError(f"the checkpoint's training data folders ({'; '.join(missing)}, recorded in "
                          f"{checkpoint.with_suffix('.json').name}) do not exist here; pass "
                          "--calibration DIR (a folder with photos and sketches, or of images)")
    raise ExportError("no real images to calibrate and check the export: the checkpoint records no "
                      "training data folders (data.photos/data.sketches) and --calibration was not "
                      "given; pass --calibration DIR (a folder with photos and sketches, or of images)")


def load_images(files: list[Path], size: int) -> np.ndarray:
    """Decode and fit (exactly as the runtime does) -> uint8 N x size x size x 3."""
    out = []
    for f in files:
        try:
            out.append(imageio.fit_square(imageio.decode(f), size)[0])
        except imageio.ImageError as exc:
            log.warning("skipping calibration image %s: %s", f, exc)
    if not out:
        raise ExportError(f"none of {len(files)} calibration images could be read")
    return np.stack(out)


def to_input(u8: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    return imageio.normalize(u8, normalization)


@dataclass
class DomainImages:
    folder: Path
    calibration_names: list[str]
    parity_names: list[str]
    calibration: np.ndarray     # float32 N x 3 x S x S in model range
    parity: np.ndarray


# ------------------------------------------------------------------ context
@dataclass
class ExportContext:
    checkpoint: Path                 # the model.safetensors
    config: dict[str, Any]
    nets: dict[str, Any]             # {'G_A': module, 'G_B': module}, fp32 CPU eval
    out: Path                        # folder the files are written to
    work: Path                       # scratch folder (removed afterwards)
    size: int
    max_batch: int
    folders: dict[str, Path]
    folders_note: str
    speed_check: bool = True
    parity_images: int = PARITY_IMAGES
    checkpoint_sha256: str = ""
    extras: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _images: dict[str, DomainImages] = field(default_factory=dict)
    _refs: dict[str, np.ndarray] = field(default_factory=dict)
    _onnx: dict[str, Path] = field(default_factory=dict)

    @property
    def normalization(self) -> dict[str, Any]:
        return self.config["normalization"]

    def net(self, direction: str):
        return self.nets[self.config.get("generators", DIRECTION_GENERATOR)[direction]]

    def note(self, fmt: str, direction: str, **info: Any) -> dict[str, Any]:
        """Exporter-specific facts for the manifest entry (info, companions, io)."""
        slot = self.extras.setdefault((fmt, direction), {})
        for k, v in info.items():
            if k == "companions":
                slot.setdefault("companions", []).extend(v)
            elif k == "info":
                slot.setdefault("info", {}).update(v)
            else:
                slot[k] = v
        return slot

    # images ---------------------------------------------------------------
    def images(self, domain: str) -> DomainImages:
        if domain in self._images:
            return self._images[domain]
        folder = self.folders[domain]
        files = imageio.list_images(folder)
        if not files:
            raise ExportError(f"calibration folder {folder} holds no images")
        held = set((self.config.get("data") or {}).get("held_out") or [])
        k = min(self.parity_images, max(1, len(files) // 4))
        parity = [f for f in files if f.name in held][:k]
        parity += [f for f in reversed(files) if f not in parity][:k - len(parity)]
        rest = [f for f in files if f not in parity] or files
        want = max((f.options.get("calibration_images", 0) for f in FORMATS.values()), default=64)
        calib = rest[:max(1, want)]
        cal_u8, par_u8 = load_images(calib, self.size), load_images(parity, self.size)
        d = DomainImages(folder, [f.name for f in calib], [f.name for f in parity],
                         to_input(cal_u8, self.normalization), to_input(par_u8, self.normalization))
        log.info("%s images from %s: %d for calibration, %d for parity", domain, folder,
                 len(d.calibration), len(d.parity))
        self._images[domain] = d
        return d

    def calibration(self, direction: str, limit: int | None = None) -> np.ndarray:
        x = self.images(SOURCE_DOMAIN[direction]).calibration
        return x[:limit] if limit else x

    def images_folder(self, direction: str) -> Path:
        return self.folders[SOURCE_DOMAIN[direction]]

    def parity_inputs(self, direction: str) -> np.ndarray:
        return self.images(SOURCE_DOMAIN[direction]).parity

    def reference(self, direction: str) -> np.ndarray:
        """PyTorch fp32 CPU output on the parity images (the ground truth of parity)."""
        if direction not in self._refs:
            import torch
            x = torch.from_numpy(self.parity_inputs(direction))
            with torch.inference_mode():
                self._refs[direction] = self.net(direction)(x).float().numpy()
        return self._refs[direction]

    # metadata ----------------------------------------------------------------
    def metadata(self, direction: str, fmt: str) -> dict[str, str]:
        return {
            "direction": direction,
            "domain_in": SOURCE_DOMAIN[direction],
            "domain_out": "sketch" if SOURCE_DOMAIN[direction] == "photo" else "photo",
            "image_size": str(self.size),
            "normalization": json.dumps(self.normalization),
            "format": fmt,
            "precision": FORMATS[fmt].precision,
            "source_sha256": self.checkpoint_sha256,
            "version": _facesketch_version(),
        }

    # the shared fp32 ONNX (export.onnx_io.fp32_onnx) ---------------------------
    def onnx_file(self, direction: str) -> Path | None:
        """The fp32 ONNX already written for ``direction`` in this export, if any."""
        return self._onnx.get(direction)

    def set_onnx_file(self, direction: str, path: Path) -> None:
        self._onnx[direction] = path

    def forget_onnx_files(self) -> None:
        self._onnx.clear()


def _facesketch_version() -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version("facesketch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def quiet(capture_output: bool = False):
    """Silence exporter chatter (torchvision op registrations, deprecation warnings; with
    ``capture_output`` also the quantizers' prints and progress bars, kept at debug level)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export",
             "torch._export", "onnxscript", "onnx_ir", "nncf")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            if capture_output:
                stack.enter_context(contextlib.redirect_stdout(buf))
                stack.enter_context(contextlib.redirect_stderr(buf))
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)
        if buf.getvalue():
            log.debug("quantizer output:\n%s", buf.getvalue())
