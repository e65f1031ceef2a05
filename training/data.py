"""Training data: layout detection, decode-once loading, on-device augmentation.

Domain A = photos, B = sketches; the two folders are used unpaired. Each image
is decoded once (any format and mode -> RGB, EXIF orientation), fitted into a
square of ``load_size`` (aspect kept, edge padding, exactly what the runtime
does at inference) and kept as uint8 on the training device. Augmentation
(random crop of ``size`` and horizontal flip, the paper's 286->256 jitter scaled
to the image size) runs there too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facesketch.imageio import list_images, load_folder

log = logging.getLogger("facesketch.data")


class DataError(ValueError):
    """The data folders are missing, empty or not a known layout."""


# name -> (photos folder, sketches folder, test photos, test sketches) relative to --data
LAYOUTS: dict[str, tuple[str, str, str | None, str | None]] = {
    "cufs": ("train_photos", "train_sketches", "test_photos", "test_sketches"),
    "kaggle": ("train/photos", "train/sketches", "test/photos", "test/sketches"),
    "cyclegan": ("trainA", "trainB", "testA", "testB"),
}


@dataclass
class Layout:
    name: str
    photos: Path
    sketches: Path
    test_photos: Path | None = None
    test_sketches: Path | None = None


def detect_layout(data: str | Path) -> Layout:
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    for name, (a, b, ta, tb) in LAYOUTS.items():
        if (root / a).is_dir() and (root / b).is_dir():
            tpa = root / ta if ta and (root / ta).is_dir() else None
            tpb = root / tb if tb and (root / tb).is_dir() else None
            return Layout(name, root / a, root / b, tpa, tpb)
    known = "; ".join(f"{n}: {a}/ + {b}/" for n, (a, b, _, _) in LAYOUTS.items())
    raise DataError(f"{root} is not a layout facesketch knows ({known}); "
                    "or pass --photos DIR --sketches DIR")


def resolve_layout(data: str | None, photos: str | None, sketches: str | None) -> Layout:
    if photos or sketches:
        if not (photos and sketches):
            raise DataError("--photos and --sketches go together")
        for label, p in (("photos", photos), ("sketches", sketches)):
            if not Path(p).is_dir():
                raise DataError(f"{label} folder {p} does not exist")
        return Layout("folders", Path(photos), Path(sketches))
    if not data:
        raise DataError("give --data DIR, or --photos DIR --sketches DIR")
    return detect_layout(data)


@dataclass
class Domain:
    """Decoded images of one domain: uint8 N x 3 x S x S on ``device``."""

    name: str
    folder: str
    images: torch.Tensor
    names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def face_aligner(stats: dict[str, int]):
    """A ``prepare`` function for load_folder: the largest face cropped in the CUFS
    framing, as the runtime's --align auto does (images already framed, or without a
    face, stay whole); ``stats`` counts what happened."""
    from facesketch.face import FaceFinderUnavailable, default_finder
    try:
        finder = default_finder()
    except FaceFinderUnavailable as exc:
        raise DataError(f"--align auto: {exc}") from exc

    def prepare(rgb: np.ndarray) -> np.ndarray:
        faces = finder.detect(rgb)
        what = ("no face found" if not faces else
                "already framed" if finder.is_framed(rgb, faces[0]) else "aligned")
        stats[what] = stats.get(what, 0) + 1
        return finder.align(rgb, faces[0]).crop if what == "aligned" else rgb
    return prepare


def load_domain(name: str, folder: Path, load_size: int, limit: int | None,
                device: torch.device, align: str = "off", stats: dict[str, int] | None = None) -> Domain:
    if not folder.is_dir():
        raise DataError(f"{name} folder {folder} does not exist")
    if not list_images(folder):
        raise DataError(f"{name} folder {folder} holds no images "
                        "(looked for .jpg .jpeg .png .webp .bmp)")
    stats = {} if stats is None else stats
    prepare = face_aligner(stats) if align == "auto" else None
    arr, names, skipped = load_folder(folder, load_size, limit=limit, warn=log.warning, prepare=prepare)
    if prepare is not None:
        log.info("%s: face alignment: %s", name, ", ".join(f"{v} {k}" for k, v in sorted(stats.items())))
    if len(names) == 0:
        raise DataError(f"{name} folder {folder}: none of its images could be read "
                        f"({len(skipped)} skipped)")
    t = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)
    return Domain(name, str(folder), t, names, skipped)


def split_holdout(dom: Domain, names: list[str]) -> tuple[Domain, Domain]:
    """Split off the images called ``names`` (kept in that order) as a held-back set."""
    index = {n: i for i, n in enumerate(dom.names)}
    held = [index[n] for n in names if n in index]
    keep = [i for i in range(len(dom)) if i not in set(held)]
    sel = lambda ix: Domain(dom.name, dom.folder, dom.images[ix], [dom.names[i] for i in ix])  # noqa: E731
    train = sel(keep)
    train.skipped = dom.skipped
    return train, sel(held)


def choose_holdout(photos: Domain, sketches: Domain, count: int, seed: int) -> list[str]:
    """Names to hold back: paired names (same file name in both folders) first."""
    if count <= 0:
        return []
    common = sorted(set(photos.names) & set(sketches.names))
    pool = common if len(common) >= count else sorted(set(photos.names) | set(sketches.names))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i] for i in sorted(pick)]


def to_float(u8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [0,255] -> float in [-1, 1] (mean 0.5, std 0.5 per channel): on the training
    device, the torch twin of facesketch.imageio.normalize with checkpoint.NORMALIZATION
    (tests/test_training.py checks that the two agree)."""
    return u8.to(dtype).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5 + 0.5).to(torch.uint8)


def augment(batch_u8: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop ``size`` out of the stored ``load_size`` square, random h-flip.

    Random numbers come from ``gen`` (a CPU generator whose state is saved in
    the checkpoint), so augmentation never syncs with the GPU and resumes exactly.
    """
    n, _, h, w = batch_u8.shape
    tops = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    lefts = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    crops = []
    for i in range(n):
        c = batch_u8[i, :, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
        crops.append(c.flip(-1) if flips[i] else c)
    return torch.stack(crops)


def load_size_for(size: int) -> int:
    """The paper's 286 -> 256 jitter, scaled to ``size`` (128 -> 143)."""
    return int(round(size * 286 / 256))
