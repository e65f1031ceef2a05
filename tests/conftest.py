"""Shared fixtures. CUFS is read from ../shared/data/cufs and never copied here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUFS = Path(os.environ.get("FACESKETCH_CUFS", REPO.parent / "shared" / "data" / "cufs"))


@pytest.fixture(scope="session")
def cufs() -> Path:
    """Path to the CUFS data; skips the test with a clear message where it is absent."""
    if not (CUFS / "train_photos").is_dir():
        pytest.skip(f"CUFS data not found at {CUFS} (set FACESKETCH_CUFS or place it at "
                    "../shared/data/cufs); this test needs real photos and sketches")
    return CUFS


FS2K = Path(os.environ.get("FACESKETCH_FS2K", REPO.parent / "shared" / "data" / "fs2k"))


@pytest.fixture(scope="session")
def fs2k() -> Path:
    """Path to the FS2K pairs (in-the-wild photos and sketches); skips where absent."""
    if not (FS2K / "style3" / "photos").is_dir():
        pytest.skip(f"FS2K data not found at {FS2K} (set FACESKETCH_FS2K or place it at "
                    "../shared/data/fs2k); this test needs in-the-wild photos and sketches")
    return FS2K


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A random-init checkpoint (size 32, 1 block, ngf 8) of every generator arch
    (training.networks.ARCHS): fast for format/plumbing tests."""
    torch = pytest.importorskip("torch")
    from training.checkpoint import model_config, save_model
    from training.networks import ARCHS, build_generator, init_weights

    out = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        nets = [init_weights(build_generator(1, 8, arch)) for _ in range(2)]
        out[arch] = save_model(tmp_path_factory.mktemp(f"tiny_ckpt_{arch}"), *nets,
                               model_config(1, 8, 32, arch))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints) -> Path:
    """The reference-arch tiny checkpoint (ConvTranspose upsampling)."""
    return tiny_checkpoints["reference"]


# ------------------------------------------------------------------ export / runtime
def _synthetic_face(rng, h: int, w: int, sketch: bool):
    """A smooth face-like picture: a colour photo, or grey strokes on light paper."""
    import numpy as np
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    ring = ((yy - cy) / (0.38 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2
    face = ring < 1.0
    if sketch:
        paper = 235 + 10 * rng.random((h, w))
        g = np.where(np.abs(ring - 1.0) < 0.08, 60.0, paper) - 25 * face * rng.random((h, w))
        return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    base = rng.uniform(40, 200, 3)
    skin = np.array([205, 160, 130]) * rng.uniform(0.7, 1.1)
    img = base + (xx[..., None] / w) * rng.uniform(-40, 40, 3)
    img = np.where(face[..., None], skin + 10 * np.sin(yy / 3)[..., None], img)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A CycleGAN-layout folder (trainA = photos, trainB = sketches) of 16 synthetic
    40x50 images each: real files to calibrate/check exports where CUFS is not needed."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("synthetic_data")
    rng = np.random.default_rng(0)
    for sub, sketch in (("trainA", False), ("trainB", True)):
        (root / sub).mkdir()
        for i in range(16):
            Image.fromarray(_synthetic_face(rng, 50, 40, sketch)).save(root / sub / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory, tiny_checkpoints, synthetic_data):
    """arch -> the tiny checkpoint of that arch exported with every format this machine
    can build, calibrated on synthetic_data; exported on first use, once per session
    (copy a bundle before modifying it). openvino-int8 is kept whatever its speed
    (speed_check=False) so its runtime path is always tested."""
    pytest.importorskip("onnx")
    from export import export_bundle
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = tmp_path_factory.mktemp(f"tiny_bundle_{arch}") / "bundle"
            made[arch] = export_bundle(tiny_checkpoints[arch], out, formats="all",
                                       calibration=synthetic_data, speed_check=False)
        return made[arch]
    return get


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundles) -> Path:
    """The reference-arch tiny bundle."""
    return tiny_bundles("reference")
