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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init checkpoint (size 32, 1 block, ngf 8): fast for format/plumbing tests."""
    torch = pytest.importorskip("torch")
    from training.checkpoint import model_config, save_model
    from training.networks import build_generator, init_weights

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = model_config(1, 8, 32)
    return save_model(out, init_weights(build_generator(1, 8)), init_weights(build_generator(1, 8)), cfg)
