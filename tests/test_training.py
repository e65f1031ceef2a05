"""Trainer foundation: networks, data layouts, checkpoints, exact resume, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from facesketch.config import ConfigError, from_dict  # noqa: E402
from facesketch.imageio import decode  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import DataError, detect_layout, resolve_layout  # noqa: E402
from training.networks import (build_discriminator, build_generator, count_parameters,  # noqa: E402
                               init_weights)
from training.trainer import lr_factor, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny(out: Path, cufs: Path, **kw) -> TrainConfig:
    """The smallest real training configuration: CUFS images at 32x32, 1 block, 8 filters."""
    base = dict(out=str(out), data=str(cufs), size=32, blocks=1, ngf=8, ndf=8, max_images=4,
                holdout=2, epochs=2, progress=False, fit_detector=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def write_images(folder: Path, n: int, mode: str = "RGB", ext: str = ".png", seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(folder / f"{i:03d}{ext}")


# ----------------------------------------------------------------- networks
@pytest.mark.parametrize("blocks,expected", [(9, 11_378_179), (6, 7_837_699), (3, 4_297_219)])
def test_generator_parameter_counts(blocks, expected):
    assert count_parameters(build_generator(blocks)) == expected


def test_discriminator_parameter_count():
    assert count_parameters(build_discriminator()) == 2_764_737


@pytest.mark.parametrize("net", ["G1", "G3", "D"])
def test_networks_shapes_and_init(net):
    m = init_weights(build_generator(int(net[1])) if net[0] == "G" else build_discriminator())
    x = torch.randn(2, 3, 64, 64)
    y = m(x)
    if net[0] == "G":
        assert y.shape == x.shape and y.abs().max() <= 1.0
    else:
        assert y.shape == (2, 1, 6, 6)  # PatchGAN map
    w = [p for n, p in m.named_parameters() if n.endswith("weight")]
    assert abs(float(torch.cat([p.detach().flatten() for p in w]).std()) - 0.02) < 0.002


def test_reference_state_dict_names_and_import(tmp_path):
    g_a, g_b = init_weights(build_generator(9)), init_weights(build_generator(9))
    keys = list(g_a.state_dict())
    assert keys[0] == "model.1.weight" and "model.10.conv_block.1.weight" in keys
    # Reference checkpoints: saved from DataParallel (module.) and, in old releases,
    # with InstanceNorm running stats that current modules do not have.
    sd = {f"module.{k}": v for k, v in g_a.state_dict().items()}
    sd["module.model.2.running_mean"] = torch.zeros(64)
    sd["module.model.2.running_var"] = torch.ones(64)
    torch.save(sd, tmp_path / "G_A.pth")
    torch.save(g_b.state_dict(), tmp_path / "G_B.pth")
    out = ckpt.import_reference(tmp_path / "G_A.pth", tmp_path / "G_B.pth", tmp_path / "ck")
    nets, cfg = ckpt.load_model(out)
    assert cfg["arch"]["blocks"] == 9 and cfg["generators"]["photo2sketch"] == "G_A"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(nets["G_A"](x), g_a.eval()(x))
        assert torch.equal(nets["G_B"](x), g_b.eval()(x))


def test_import_reference_rejects_non_generator(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ckpt.CheckpointError, match="not a reference ResnetGenerator"):
        ckpt.import_reference(tmp_path / "bad.pth", tmp_path / "bad.pth", tmp_path / "o")
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.import_reference(tmp_path / "junk.pth", tmp_path / "junk.pth", tmp_path / "o")


# ----------------------------------------------------------------- data
@pytest.mark.parametrize("layout,a,b", [
    ("cufs", "train_photos", "train_sketches"),
    ("kaggle", "train/photos", "train/sketches"),
    ("cyclegan", "trainA", "trainB"),
])
def test_every_layout_is_recognised(tmp_path, layout, a, b):
    write_images(tmp_path / a, 2)
    write_images(tmp_path / b, 2, mode="L")
    found = detect_layout(tmp_path)
    assert found.name == layout
    assert found.photos == tmp_path / a and found.sketches == tmp_path / b


def test_photos_and_sketches_folders(tmp_path):
    write_images(tmp_path / "p", 1)
    write_images(tmp_path / "s", 1)
    assert resolve_layout(None, str(tmp_path / "p"), str(tmp_path / "s")).name == "folders"
    with pytest.raises(DataError, match="go together"):
        resolve_layout(None, str(tmp_path / "p"), None)


def test_unknown_layout_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a layout facesketch knows"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")


def test_empty_folder_fails_before_training(tmp_path):
    (tmp_path / "trainA").mkdir()
    write_images(tmp_path / "trainB", 2)
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path), size=32, blocks=1, ngf=8,
                      ndf=8, holdout=0, epochs=1, progress=False, fit_detector=False)
    with pytest.raises(DataError, match="holds no images"):
        train(cfg)
    assert not (tmp_path / "run" / ckpt.STATE_FILE).exists()


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA", "CMYK", "I;16", "LA"])
def test_mixed_modes_decode_to_rgb(tmp_path, mode):
    arr = np.random.default_rng(1).integers(0, 255, (25, 20, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
        assert img.mode.startswith("I")
    ext = ".jpg" if mode == "CMYK" else ".png"
    if mode == "CMYK":
        img.save(tmp_path / f"x{ext}", format="JPEG")
    elif mode == "P":
        img.save(tmp_path / f"x{ext}")
    else:
        img.save(tmp_path / f"x{ext}") if mode != "LA" else img.save(tmp_path / "x.png")
    rgb = decode(tmp_path / f"x{ext}")
    assert rgb.dtype == np.uint8 and rgb.shape == (25, 20, 3)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :5] = 255  # white stripe on the left
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = decode(tmp_path / "r.jpg")
    assert rgb.shape == (30, 10, 3)
    assert rgb[:5].mean() > 200 and rgb[-5:].mean() < 50  # stripe now at the top


def test_corrupt_file_is_skipped_with_its_name(tmp_path, caplog):
    write_images(tmp_path / "trainA", 3)
    write_images(tmp_path / "trainB", 3)
    (tmp_path / "trainA" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (tmp_path / "trainA" / "000.png").read_bytes()
    (tmp_path / "trainA" / "truncated.png").write_bytes(good[: len(good) // 2])
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path), size=32, blocks=1, ngf=8,
                      ndf=8, holdout=0, epochs=1, progress=False, fit_detector=False)
    with caplog.at_level("WARNING"):
        train(cfg)
    text = caplog.text
    assert "broken.jpg" in text and "truncated.png" in text
    data = ckpt.read_config(tmp_path / "run")["data"]
    assert sorted(data["skipped"]) == ["broken.jpg", "truncated.png"]
    assert data["train_photos"] == 3


# ----------------------------------------------------------------- config
def test_config_unknown_key_names_valid_ones():
    with pytest.raises(ConfigError, match="unknown TrainConfig key.*bogus.*valid keys:.*batch_size"):
        from_dict(TrainConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="precision must be one of"):
        from_dict(TrainConfig, {"precision": "fp8"})
    with pytest.raises(ConfigError, match="size must be"):
        TrainConfig(size=30).validate()


def test_lr_schedule_constant_then_linear_decay():
    f = [lr_factor(e, 10) for e in range(10)]
    assert f[:5] == [1.0] * 4 + [f[4]] and f[0] == 1.0
    assert all(a > b for a, b in zip(f[4:], f[5:]))
    assert 0 < f[-1] < 0.2


# ----------------------------------------------------------------- training on CUFS
@pytest.mark.cufs
def test_real_training_step_changes_weights_with_finite_losses(tmp_path, cufs):
    cfg = tiny(tmp_path / "run", cufs, epochs=1)
    torch.manual_seed(cfg.seed)
    from training.trainer import Run
    run = Run(cfg)
    run.load_data()
    run.build()
    run.wrap()
    before = {k: v.clone() for k, v in run.G_A.state_dict().items()}
    d_before = {k: v.clone() for k, v in run.D_A.state_dict().items()}
    order = run.epoch_order(0, len(run.train_A))
    losses = run.train_step(run.batch(run.train_A, order, 0), run.batch(run.train_B, order, 0))
    assert torch.isfinite(losses).all() and (losses > 0).all()
    assert any(not torch.equal(before[k], v) for k, v in run.G_A.state_dict().items())
    assert any(not torch.equal(d_before[k], v) for k, v in run.D_A.state_dict().items())


@pytest.mark.cufs
def test_run_writes_checkpoint_samples_and_logs(tmp_path, cufs):
    out = train(tiny(tmp_path / "run", cufs))
    for f in ("model.safetensors", "model.json", "state.safetensors", "log.jsonl", "losses.png",
              "samples/epoch_000.png", "samples/epoch_001.png", "best/model.safetensors"):
        assert (out / f).is_file(), f
    cfg = ckpt.read_config(out)
    assert cfg["image_size"] == 32 and cfg["data"]["layout"] == "cufs"
    assert cfg["progress"]["epoch"] == 2 and "val" in cfg["metrics"]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(list(r["losses"].values())).all() for r in rows)
    grid = Image.open(out / "samples" / "epoch_001.png")
    assert grid.size == (3 * 32, 4 * 32)  # input | translated | reconstructed, 2+2 held back
    with pytest.raises(ckpt.CheckpointError, match="already holds a run"):
        train(tiny(tmp_path / "run", cufs))


@pytest.mark.cufs
def test_checkpoint_round_trip_is_bit_exact(tmp_path, cufs):
    out = train(tiny(tmp_path / "run", cufs, epochs=1))
    nets, cfg = ckpt.load_model(out)
    again = ckpt.save_model(tmp_path / "copy", nets["G_A"], nets["G_B"], cfg)
    from safetensors.torch import load_file
    a, b = load_file(str(out / ckpt.MODEL_FILE)), load_file(str(again / ckpt.MODEL_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state, _ = ckpt.load_state(out / ckpt.STATE_FILE)
    assert all(torch.equal(state[k], a[k]) for k in a)  # model file == training state's G


def test_tampered_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    cfg = json.loads((bad / "model.json").read_text())
    cfg["weights_sha256"] = "0" * 64
    (bad / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="do not match the sha256"):
        ckpt.load_model(bad)


def _state(path: Path) -> dict:
    tensors, _ = ckpt.load_state(path / ckpt.STATE_FILE)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


@pytest.mark.cufs
def test_exact_resume_matches_straight_run(tmp_path, cufs):
    # 4 steps per epoch; stop at 6 (inside epoch 2) straight, vs 3 + resume to 6.
    straight = train(tiny(tmp_path / "a", cufs, max_steps=6))
    train(tiny(tmp_path / "b", cufs, max_steps=3))
    mid = ckpt.load_state(tmp_path / "b" / ckpt.STATE_FILE)[1]
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (0, 3, 3)
    resumed = train(tiny(tmp_path / "b", cufs, max_steps=6, resume=True))
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


@pytest.mark.cufs
def test_training_without_history_pool(tmp_path, cufs):
    out = train(tiny(tmp_path / "run", cufs, epochs=1, pool_size=0))
    assert ckpt.load_state(out / ckpt.STATE_FILE)[1]["global_step"] == 4


def test_resume_without_state_is_a_clear_error(tmp_path):
    write_images(tmp_path / "trainA", 2)
    write_images(tmp_path / "trainB", 2)
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path), size=32, blocks=1, ngf=8,
                      ndf=8, holdout=0, epochs=1, progress=False, resume=True)
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume"):
        train(cfg)


# ----------------------------------------------------------------- interruption
_CHILD = """
import sys, logging
logging.basicConfig(level=logging.INFO)
from training.config import TrainConfig
from training.trainer import train
train(TrainConfig(out=sys.argv[1], data=sys.argv[2], size=32, blocks=1, ngf=8, ndf=8,
                  max_images=12, holdout=2, epochs=50, progress=False, fit_detector=False,
                  resume=sys.argv[3] == "1", max_steps=int(sys.argv[4])))
"""


def _spawn(out: Path, cufs: Path, resume: bool, max_steps: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(cufs), str(int(resume)),
                             str(max_steps)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.05)


@pytest.mark.cufs
@pytest.mark.slow
def test_kill_9_leaves_last_checkpoint_and_resume_continues(tmp_path, cufs):
    out = tmp_path / "run"
    proc = _spawn(out, cufs, False, 10_000)
    state = out / ckpt.STATE_FILE
    _wait_for(lambda: state.exists(), 120, proc)
    first = ckpt.load_state(state)[1]["global_step"]
    # Kill while the next epoch is (likely) being written or trained.
    _wait_for(lambda: (out / "log.jsonl").exists() and
              len((out / "log.jsonl").read_text().splitlines()) >= 2, 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    tensors, meta = ckpt.load_state(state)  # intact and readable
    assert meta["global_step"] >= first
    ckpt.load_model(out)  # the model pair is consistent too
    proc = _spawn(out, cufs, True, meta["global_step"] + 3)
    assert proc.wait(timeout=180) == 0, proc.stdout.read()
    assert ckpt.load_state(state)[1]["global_step"] == meta["global_step"] + 3


@pytest.mark.cufs
@pytest.mark.slow
def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, cufs):
    out = tmp_path / "run"
    proc = _spawn(out, cufs, False, 10_000)
    _wait_for(lambda: (out / "log.jsonl").exists(), 120, proc)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert "resumable checkpoint" in text
    meta = ckpt.load_state(out / ckpt.STATE_FILE)[1]
    assert meta["global_step"] > 0
