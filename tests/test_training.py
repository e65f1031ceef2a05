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
F = torch.nn.functional

from facesketch.config import ConfigError, from_dict  # noqa: E402
from facesketch.imageio import decode  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import DataError, detect_layout, resolve_layout  # noqa: E402
from training.networks import (build_discriminator, build_generator, count_parameters,  # noqa: E402
                               init_weights)
from training.trainer import LOSS_NAMES, lr_factor, train  # noqa: E402

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
    order_A, order_B = run.orders(0)
    losses = run.train_step(*run.batches(order_A, order_B, 0))  # CUFS pairs: paired L1 on
    from training.trainer import LOSS_NAMES
    named = dict(zip(LOSS_NAMES, losses.tolist()))
    assert torch.isfinite(losses).all()
    assert [named.pop(k) for k in ("spectral", "cross", "tensor", "shift", "fm_A", "fm_B")] == [0] * 6  # off by default
    assert all(v > 0 for v in named.values()), named
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
    val = cfg["metrics"]["val"]   # scored at the files' own size, as evaluate scores the test set
    assert val["score_on"] == "native" and val["pairs"] == 2
    assert val["score"] == pytest.approx((val["native_fsim_photo2sketch"] + val["native_fsim_sketch2photo"]) / 2)
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(list(r["losses"].values())).all() for r in rows)
    grid = Image.open(out / "samples" / "epoch_001.png")
    assert grid.size == (3 * 32, 4 * 32)  # input | translated | reconstructed, 2+2 held back
    with pytest.raises(ckpt.CheckpointError, match="already holds a run"):
        train(tiny(tmp_path / "run", cufs))


@pytest.mark.cufs
def test_native_validation_translates_as_the_runtime_does(tmp_path, cufs):
    """Validation's held-back pairs are the files at their own size, translated through
    the runtime's geometry: the same pixels as runtime.Translator on the saved model."""
    from runtime import Translator
    from training import validation
    from training.trainer import Run
    out = train(tiny(tmp_path / "a", cufs, epochs=1))
    run = Run(tiny(tmp_path / "b", cufs, epochs=1, init=str(out)))
    run.load_data()
    run.build()
    assert len(run.held_native) == 2
    photo, sketch = run.held_native[0]
    assert photo.shape == (250, 200, 3) and sketch.shape[:2] == (250, 200)  # CUFS's own size
    ours = validation.translate_native(run, run.G_A, photo)
    theirs = Translator.load(out, backend="torch-cpu").translate(photo, "photo2sketch").image
    assert ours.shape == theirs.shape == photo.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.cufs
def test_best_restarts_when_validation_changes_basis(tmp_path, cufs):
    """A run resumed from a state whose best score was measured on the model's grid
    (before validation at the files' size) must not keep comparing against it."""
    from training import validation
    from training.trainer import Run
    run = Run(tiny(tmp_path / "r", cufs, epochs=1))
    run.load_data()
    run.build()
    run.out.mkdir(parents=True)
    run.best_score, run.best_score_on = 0.99, "grid"    # unreachable on the new basis
    validation.end_of_epoch(run, {}, 1.0)
    assert run.best_score_on == "native" and run.best_score < 0.99
    assert run.best_score == run.history[-1]["val"]["score"]
    assert (run.out / "best" / "model.safetensors").is_file()


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
@pytest.mark.parametrize("extra", [{}, {"lambda_fm": 10.0, "ema": 0.9}], ids=["plain", "fm-ema"])
def test_exact_resume_matches_straight_run(tmp_path, cufs, extra):
    # 4 steps per epoch; stop at 6 (inside epoch 2) straight, vs 3 + resume to 6.
    straight = train(tiny(tmp_path / "a", cufs, max_steps=6, **extra))
    train(tiny(tmp_path / "b", cufs, max_steps=3, **extra))
    mid = ckpt.load_state(tmp_path / "b" / ckpt.STATE_FILE)[1]
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (0, 3, 3)
    resumed = train(tiny(tmp_path / "b", cufs, max_steps=6, resume=True, **extra))
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    assert any(k.startswith("ema_A.") for k in a) == bool(extra)  # the average is resumed too
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


@pytest.mark.cufs
def test_training_without_history_pool(tmp_path, cufs):
    out = train(tiny(tmp_path / "run", cufs, epochs=1, pool_size=0))
    assert ckpt.load_state(out / ckpt.STATE_FILE)[1]["global_step"] == 4


# ----------------------------------------------------------------- semi-supervised pairs
def _pair_run(tmp_path: Path, photos: Path, sketches: Path, **kw):
    from training.trainer import Run
    base = dict(out=str(tmp_path / "run"), photos=str(photos), sketches=str(sketches), size=32,
                blocks=1, ngf=8, ndf=8, holdout=0, epochs=1, progress=False, fit_detector=False)
    base.update(kw)
    run = Run(TrainConfig(**base))
    run.load_data()
    run.build()
    run.wrap()
    return run


def _rotated_partners(tmp_path: Path) -> tuple[Path, Path]:
    """Two photos and, by the same names, partners that differ (the photos rotated)."""
    write_images(tmp_path / "p", 2, ext=".png", seed=1)
    (tmp_path / "s").mkdir()
    for f in sorted((tmp_path / "p").iterdir()):
        Image.open(f).rotate(90).save(tmp_path / "s" / f.name)
    return tmp_path / "p", tmp_path / "s"


def _first_step_losses(tmp_path: Path, photos: Path, sketches: Path, option: str,
                       weights: tuple[float, ...]) -> dict[float, dict[str, float]]:
    """The named losses of the first step of the same run (seed, weights, batch) with
    ``option`` set to each weight."""
    from training.trainer import LOSS_NAMES
    named = {}
    for w in weights:
        run = _pair_run(tmp_path, photos, sketches, out=str(tmp_path / f"r_{option}_{w}"), **{option: w})
        named[w] = dict(zip(LOSS_NAMES, run.train_step(*run.batches(*run.orders(0), 0)).tolist()))
    return named


def test_pairs_auto_finds_pairs_by_file_name_and_shares_their_augmentation(tmp_path):
    # the same pictures in both folders, sketches as .jpg: every photo has its partner
    write_images(tmp_path / "p", 6, ext=".png", seed=1)
    for f in sorted((tmp_path / "p").iterdir()):
        (tmp_path / "s").mkdir(exist_ok=True)
        Image.open(f).save(tmp_path / "s" / (f.stem + ".png"))
    (tmp_path / "s" / "005.png").rename(tmp_path / "s" / "005.bmp")  # another suffix still pairs
    run = _pair_run(tmp_path, tmp_path / "p", tmp_path / "s")
    assert len(run.partner) == 6 and run.data_summary["train_pairs"] == 6
    order_A, order_B = run.orders(0)
    for a, b in zip(order_A, order_B):
        assert run.train_A.names[a].split(".")[0] == run.train_B.names[b].split(".")[0]
    for step in range(run.steps_per_epoch):  # same crop and flip for both: identical tensors
        real_A, real_B, paired = run.batches(order_A, order_B, step)
        assert paired.tolist() == [1.0] and torch.equal(real_A, real_B)
    losses = run.train_step(real_A, real_B, paired)
    from training.trainer import LOSS_NAMES
    named = dict(zip(LOSS_NAMES, losses.tolist()))
    assert named["pair_A"] > 0 and named["pair_B"] > 0


def test_unpaired_folders_and_pairs_off_train_unpaired(tmp_path, caplog):
    write_images(tmp_path / "p", 4, seed=1)
    write_images(tmp_path / "s", 4, seed=2)
    for f in (tmp_path / "s").iterdir():
        f.rename(f.with_name("sk_" + f.name))  # no common names
    import logging
    with caplog.at_level(logging.INFO, logger="facesketch.train"):
        run = _pair_run(tmp_path, tmp_path / "p", tmp_path / "s")
    assert run.partner == {} and "0 of 4 photos" in caplog.text and "training unpaired" in caplog.text
    real_A, real_B, paired = run.batches(*run.orders(0), 0)
    assert paired is None
    losses = run.train_step(real_A, real_B, paired)
    from training.trainer import LOSS_NAMES
    named = dict(zip(LOSS_NAMES, losses.tolist()))
    assert named["pair_A"] == 0 and named["pair_B"] == 0 and named["cycle_A"] > 0
    write_images(tmp_path / "s2", 4, seed=2)  # same names, but --pairs off
    assert _pair_run(tmp_path, tmp_path / "p", tmp_path / "s2", pairs="off",
                     out=str(tmp_path / "r2")).partner == {}


def test_pair_gradient_loss_adds_to_the_paired_loss_and_is_zero_for_equal_images(tmp_path):
    from training.losses import gradient_l1
    x = torch.rand(2, 3, 16, 16)
    assert gradient_l1(x, x).tolist() == [0.0, 0.0]
    assert gradient_l1(x, x + 0.3).abs().max() < 1e-6          # a shift has the same edges
    assert (gradient_l1(x, torch.zeros_like(x)) > 0).all()
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_pair_grad", (0.0, 10.0))
    # same seed, same weights, same batch: the gradient term only adds
    assert named[10.0]["pair_A"] > named[0.0]["pair_A"] > 0
    assert named[10.0]["pair_B"] > named[0.0]["pair_B"] > 0


def test_fsim_loss_is_evaluates_fsim_and_its_gradient_raises_it(tmp_path):
    """training.losses.fsim equals facesketch.metrics.fsim (the evaluation's measure), also
    where FSIM first subsamples (F = 2 from 384 px); its gradient raises it; the trainer adds
    1 - FSIM of paired samples to the paired loss."""
    from facesketch.metrics import fsim as measure
    from training.losses import fsim
    gen = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(2, 3, 12, 10, generator=gen, dtype=torch.float64) * 2 - 1,
                           size=(60, 48), mode="bilinear", align_corners=False)
    x, y = smooth[:1], smooth[1:]
    for a, b in ((x, y), (F.interpolate(x, scale_factor=8), F.interpolate(y, scale_factor=8))):
        want = measure(*((t[0].permute(1, 2, 0).numpy() + 1) * 127.5 for t in (a, b)))
        assert fsim(a, b).item() == pytest.approx(want, abs=1e-6)
    assert fsim(x, x).item() == pytest.approx(1.0)
    fake = x.float().clone().requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.02)
    first = fsim(fake, y.float()).item()
    for _ in range(30):
        opt.zero_grad()
        (1 - fsim(fake, y.float())).sum().backward()
        opt.step()
    assert fsim(fake, y.float()).item() > first + 0.05
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_pair_fsim", (0.0, 10.0))
    assert named[10.0]["pair_A"] > named[0.0]["pair_A"] > 0   # same step: the FSIM term only adds
    assert named[10.0]["pair_B"] > named[0.0]["pair_B"] > 0


def test_pooled_fsim_prefers_strands_to_a_lattice_and_sharp_contours_to_blurred():
    """Exact FSIM scores a regular lattice above strands of the artist's kind a pixel or two
    off (why the FSIM loss drew a mesh in hair); --fsim-pool's shift tolerance reverses
    that, still scores a blank below both, and still prefers a sharp contour."""
    from training.losses import fsim
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = lambda t: (0.6 * t).expand(1, 3, 96, 96).contiguous().double()  # noqa: E731
    artist = img(torch.sin(2 * np.pi * xx / 5 + 0.3 * torch.sin(yy / 9)))
    strands = img(torch.sin(2 * np.pi * (xx + 2) / 5.5 + 0.3 * torch.sin(yy / 11 + 1)))
    lattice = img(0.5 * (torch.sin(2 * np.pi * (xx + yy) / 8) + torch.sin(2 * np.pi * (xx - yy) / 8)))
    blank = img(torch.zeros(96, 96))
    assert fsim(lattice, artist) > fsim(strands, artist)
    assert fsim(strands, artist, 3) > fsim(lattice, artist, 3) > fsim(blank, artist, 3)
    radius = ((xx - 48) ** 2 + (yy - 48) ** 2).sqrt()
    sharp, blurred = img(torch.tanh(30 - radius)), img(torch.tanh((30 - radius) / 4))
    assert fsim(sharp, sharp, 3).item() == pytest.approx(1.0)
    assert fsim(blurred, sharp, 3) < fsim(blurred, sharp) < 0.9
    with pytest.raises(ConfigError, match="fsim_pool"):
        from_dict(TrainConfig, {"fsim_pool": 2}).validate()


def test_fsim_blur_is_scipys_gaussian_and_changes_only_the_fsim_term(tmp_path):
    from scipy.ndimage import gaussian_filter
    from training.losses import gaussian_blur
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = gaussian_filter(x[1, 2].numpy(), 1.5, mode="mirror", truncate=3.0)
    assert np.abs(gaussian_blur(x, 1.5)[1, 2].numpy() - want).max() < 1e-12
    assert gaussian_blur(x, 0) is x
    rot = _rotated_partners(tmp_path)
    named = {}
    for blur in (0.0, 1.5):
        run = _pair_run(tmp_path, *rot, out=str(tmp_path / f"b{blur}"), lambda_pair_fsim=10.0, fsim_blur=blur)
        named[blur] = dict(zip(LOSS_NAMES, run.train_step(*run.batches(*run.orders(0), 0)).tolist()))
    assert named[1.5]["pair_A"] != pytest.approx(named[0.0]["pair_A"], rel=1e-4)
    assert named[1.5]["cycle_A"] == pytest.approx(named[0.0]["cycle_A"], rel=1e-5)


def test_lambda_gan_scales_the_generators_adversarial_terms_only(tmp_path):
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_gan", (1.0, 5.0))
    for k in ("G_adv_A", "G_adv_B"):
        assert named[5.0][k] == pytest.approx(5 * named[1.0][k], rel=1e-5) and named[1.0][k] > 0
    for k in ("cycle_A", "pair_A", "D_A"):
        assert named[5.0][k] == pytest.approx(named[1.0][k], rel=1e-5)


def test_cross_hatch_loss_matches_evaluates_measure_and_unpicks_a_lattice(tmp_path):
    """training.losses.cross_hatch is facesketch.metrics.cross_hatch in torch; descending
    the cross-hatch excess over a strands partner makes a lattice less of one (alone, by
    fading it: in training the paired losses hold the structure);
    keeping its fine structure; the trainer logs the term and adds it to the G loss."""
    from facesketch.metrics import cross_hatch as measure
    from test_metrics import _strands_and_lattice
    from training.losses import cross_excess, cross_hatch
    strands, lattice = (torch.from_numpy(a / 127.5 - 1)[None, None].expand(1, 3, -1, -1)
                        for a in _strands_and_lattice(48, 40))
    noise = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.cat([strands, lattice, noise * 2 - 1])
    want = [measure((img.permute(1, 2, 0).numpy() + 1) * 127.5) for img in x]
    assert cross_hatch(x).tolist() == pytest.approx(want, abs=1e-5)
    assert cross_excess(strands, lattice).item() == 0 < cross_excess(lattice, strands).item()
    assert cross_excess(lattice, lattice).item() == 0       # crossing the partner has is free
    fake = lattice.float().clone().requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        cross_excess(fake, strands.float()).sum().backward()
        opt.step()
    assert cross_hatch(fake.detach()).item() < want[1] - 0.05
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_cross", (0.0, 10.0))
    assert named[0.0]["cross"] == 0 and named[10.0]["cross"] >= 0
    assert named[10.0]["G"] == pytest.approx(named[0.0]["G"] + named[10.0]["cross"], rel=1e-5)


def test_structure_tensor_loss_is_free_of_phase_and_turns_a_lattice_into_strands(tmp_path):
    """tensor_l1 (evaluate's stroke distance, in torch) against strands: the same strands
    moved 1-3 px cost almost nothing, a
    diagonal lattice much more, strands across or a blank more still (FSIM, exact,
    rewards the lattice over the moved strands); descending it from a lattice draws
    strands (the cross-hatch measure falls to a stroke's level); the trainer logs the
    term and adds it to the G loss."""
    from facesketch.metrics import stroke_distance
    from test_metrics import _strands_and_lattice
    from training.losses import cross_hatch, tensor_l1
    s, lat = _strands_and_lattice(48, 40)
    as_batch = lambda a: torch.from_numpy(a / 127.5 - 1)[None, None].expand(1, 3, -1, -1).float()  # noqa: E731
    strands, lattice = as_batch(s), as_batch(lat)
    as64 = lambda a: torch.from_numpy(a / 127.5 - 1)[None, None].expand(1, 3, -1, -1)  # noqa: E731
    assert tensor_l1(as64(lat), as64(s)).item() == pytest.approx(stroke_distance(lat, s), rel=1e-6)
    across = as_batch(128 + 60 * np.sin(2 * np.pi * np.mgrid[0:48, 0:40][0] / 7))
    moved = [tensor_l1(as_batch(np.roll(s, k, axis=1)), strands).item() for k in (1, 2, 3)]
    cost = {k: tensor_l1(v, strands).item() for k, v in
            (("lattice", lattice), ("across", across), ("blank", torch.zeros_like(strands)))}
    assert tensor_l1(strands, strands).item() == 0
    assert max(moved) < 0.15 and cost["lattice"] > 1.0
    assert cost["across"] > cost["lattice"] and cost["blank"] > cost["lattice"]
    fake = lattice.clone().requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        tensor_l1(fake, strands).sum().backward()
        opt.step()
    assert cross_hatch(lattice).item() > 0.45 and cross_hatch(fake.detach()).item() < 0.25
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_tensor", (0.0, 10.0))
    assert named[0.0]["tensor"] == 0 and named[10.0]["tensor"] > 0
    assert named[10.0]["G"] == pytest.approx(named[0.0]["G"] + named[10.0]["tensor"], rel=1e-5)


def test_spectral_loss_matches_evaluates_measure_and_flattens_a_dot_pattern(tmp_path):
    """training.losses.checkerboard_db is facesketch.metrics.checkerboard_db in torch;
    descending the spectral excess removes a dot pattern; the trainer logs the term."""
    from facesketch.metrics import checkerboard_db as measure
    from training.losses import checkerboard_db, spectral_excess
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 48, 40, generator=gen, dtype=torch.float64)
    x[2, :, ::2, ::2] += 2.0                                    # a stride-2 dot pattern
    want = [measure(img.permute(1, 2, 0).numpy() * 255) for img in x]
    assert checkerboard_db(x).tolist() == pytest.approx(want, abs=1e-4)
    assert want[2] > 10 > abs(want[0])
    smooth = torch.rand(1, 3, 48, 40, generator=gen)
    fake = x[2:].float().clone().requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.05)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)  # Adam's own steps would leave a pattern
    first = spectral_excess(fake, smooth).mean().item()
    for _ in range(300):
        opt.zero_grad()
        spectral_excess(fake, smooth).mean().backward()
        opt.step()
        decay.step()
    assert first > 10 and spectral_excess(fake, smooth).mean().item() < first / 4
    # the loss cannot be lowered by raising the power around the grid's frequencies
    # (ringing halos): along a wave 4 bins from the period-2 frequency, in the measure's
    # ring, the loss's slope is ~0 with the ring detached, and not with it attached
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="ij")
    wave = torch.cos(2 * torch.pi * ((24 + 4) * yy / 48)).expand(1, 3, 48, 40)
    base = x[2:].float().clone().requires_grad_(True)
    slopes = {}
    for detached in (True, False):
        db = checkerboard_db(base, ring_grad=not detached).sum()
        (g,) = torch.autograd.grad(db, base)
        slopes[detached] = float((g * wave).sum())
    assert slopes[False] < 0 and abs(slopes[True]) < 0.05 * abs(slopes[False])
    assert spectral_excess(smooth, smooth).item() == 0.0        # no excess over itself
    write_images(tmp_path / "p", 2, ext=".png", seed=1)
    write_images(tmp_path / "s", 2, ext=".png", seed=2)
    named = _first_step_losses(tmp_path, tmp_path / "p", tmp_path / "s", "lambda_spectral", (0.0, 1.0))
    assert named[0.0]["spectral"] == 0 and named[1.0]["spectral"] >= 0
    assert named[1.0]["G"] == pytest.approx(named[0.0]["G"] + named[1.0]["spectral"], rel=1e-5)


def test_pinned_spectral_loss_acts_on_paired_samples_only(tmp_path):
    """--spectral-ring pinned compares each translation with its partner: a paired run pays
    the ring's difference too (more than the detached loss, from the same step); unpaired
    data gets no pinned term."""
    from training.trainer import LOSS_NAMES
    photos, sketches = _rotated_partners(tmp_path)
    spec = {}
    for ring in ("detached", "pinned"):
        run = _pair_run(tmp_path, photos, sketches, out=str(tmp_path / ring), lambda_spectral=1.0,
                        spectral_ring=ring)
        batch = run.batches(*run.orders(0), 0)
        assert batch[2].tolist() == [1.0]
        spec[ring] = dict(zip(LOSS_NAMES, run.train_step(*batch).tolist()))["spectral"]
    assert spec["pinned"] > spec["detached"] >= 0
    run = _pair_run(tmp_path, photos, sketches, out=str(tmp_path / "unpaired"), pairs="off",
                    lambda_spectral=1.0, spectral_ring="pinned")   # no partner to pin to
    real_A, real_B, paired = run.batches(*run.orders(0), 0)
    assert paired is None
    assert dict(zip(LOSS_NAMES, run.train_step(real_A, real_B, paired).tolist()))["spectral"] == 0


def test_feature_matching_compares_discriminator_features_of_paired_samples(tmp_path):
    from training.losses import feature_l1
    D = init_weights(build_discriminator(8))
    x = torch.rand(2, 3, 32, 32)
    pred, feats = D(x, features=True)
    assert torch.equal(pred, D(x)) and len(feats) == 4   # same predictions, one per LeakyReLU
    assert feature_l1(feats, feats).tolist() == [0.0, 0.0]
    assert (feature_l1(feats, D(x.flip(-1), features=True)[1]) > 0).all()
    named = _first_step_losses(tmp_path, *_rotated_partners(tmp_path), "lambda_fm", (0.0, 10.0))
    assert named[0.0]["fm_A"] == named[0.0]["fm_B"] == 0
    assert named[10.0]["fm_A"] > 0 and named[10.0]["fm_B"] > 0
    assert named[10.0]["G"] == pytest.approx(named[0.0]["G"] + named[10.0]["fm_A"]
                                             + named[10.0]["fm_B"], rel=1e-5)
    write_images(tmp_path / "u", 2, seed=2)       # unpaired folders: no partner, no matching
    for f in (tmp_path / "u").iterdir():
        f.rename(f.with_name("sk_" + f.name))
    named = _first_step_losses(tmp_path, tmp_path / "p", tmp_path / "u", "lambda_fm", (10.0,))[10.0]
    assert named["fm_A"] == named["fm_B"] == 0


def test_ema_averages_the_generators_and_is_what_gets_saved(tmp_path):
    write_images(tmp_path / "trainA", 3)
    write_images(tmp_path / "trainB", 3)
    base = dict(data=str(tmp_path), size=32, blocks=1, ngf=8, ndf=8, holdout=0, epochs=1,
                progress=False, fit_detector=False, lambda_identity=0)
    from training.trainer import Run
    run = Run(TrainConfig(out=str(tmp_path / "r"), **base, ema=0.5))
    run.load_data()
    run.build()
    run.wrap()
    start = [p.clone() for p in run.G_A.parameters()]
    assert all(torch.equal(e, p) for e, p in zip(run.ema_A.parameters(), start))
    run.train_step(*run.batches(*run.orders(0), 0))
    for e, s, p in zip(run.ema_A.parameters(), start, run.G_A.parameters()):
        assert torch.allclose(e, 0.5 * s + 0.5 * p)    # halfway between before and after
    assert run.published() == (run.ema_A, run.ema_B)
    out = train(TrainConfig(out=str(tmp_path / "full"), **base, ema=0.9))
    nets, _ = ckpt.load_model(out)
    state = ckpt.load_state(out / ckpt.STATE_FILE)[0]
    for k, v in nets["G_A"].state_dict().items():      # the saved model is the average
        assert torch.equal(v, state["ema_A." + k].float()), k
    assert any(not torch.equal(v, state["G_A." + k]) for k, v in nets["G_A"].state_dict().items())
    with pytest.raises(Exception, match="ema"):
        TrainConfig(out=str(tmp_path / "x"), **base, ema=1.0).validate()


def test_init_starts_the_generators_from_a_model_and_checks_its_arch(tmp_path):
    write_images(tmp_path / "trainA", 3)
    write_images(tmp_path / "trainB", 3)
    base = dict(data=str(tmp_path), size=32, blocks=1, ngf=8, ndf=8, holdout=0, epochs=1,
                progress=False, fit_detector=False, lambda_identity=0)
    first = train(TrainConfig(out=str(tmp_path / "a"), **base, seed=1))
    src, _ = ckpt.load_model(first)
    from training.trainer import Run
    run = Run(TrainConfig(out=str(tmp_path / "b"), **base, seed=2, init=str(first)))
    run.load_data()
    run.build()
    for name in ("G_A", "G_B"):
        for k, v in src[name].state_dict().items():
            assert torch.equal(getattr(run, name).state_dict()[k], v), (name, k)
    fresh = Run(TrainConfig(out=str(tmp_path / "c"), **base, seed=2))
    fresh.load_data()
    fresh.build()
    assert not torch.equal(fresh.G_A.state_dict()["model.1.weight"], src["G_A"].state_dict()["model.1.weight"])
    with pytest.raises(ckpt.CheckpointError, match="do not match this run's --arch"):
        bad = Run(TrainConfig(out=str(tmp_path / "d"), **dict(base, ngf=16), init=str(first)))
        bad.load_data()
        bad.build()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        bad = Run(TrainConfig(out=str(tmp_path / "e"), **base, init=str(tmp_path / "absent")))
        bad.load_data()
        bad.build()


@pytest.mark.parametrize("arch", ["reference", "resize", "bicubic"])
def test_every_arch_trains_saves_and_loads(tmp_path, arch):
    write_images(tmp_path / "trainA", 3)
    write_images(tmp_path / "trainB", 3)
    out = train(TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path), size=32, blocks=1, ngf=8,
                            ndf=8, holdout=0, epochs=1, progress=False, fit_detector=False,
                            arch=arch, cycle_noise=0.1, lambda_identity=0))
    nets, cfg = ckpt.load_model(out)
    from training.networks import ARCHS
    assert cfg["arch"]["upsample"] == ARCHS[arch]
    has_transpose = any(isinstance(m, torch.nn.ConvTranspose2d) for m in nets["G_A"].modules())
    assert has_transpose == (arch == "reference")
    modes = {m.mode for m in nets["G_A"].modules() if isinstance(m, torch.nn.Upsample)}
    assert modes == ({"bilinear"} if arch == "resize" else {"bicubic"} if arch == "bicubic" else set())
    with pytest.raises(ckpt.CheckpointError, match="arch"):  # resume must keep the arch
        other = "resize" if arch == "reference" else "reference"
        train(TrainConfig(out=str(out), data=str(tmp_path), size=32, blocks=1, ngf=8, ndf=8,
                          holdout=0, epochs=2, progress=False, arch=other, resume=True))


@pytest.mark.parametrize("arch", ["reference", "resize", "bicubic"])
def test_exportable_form_computes_the_same_generator(arch):
    """export's ONNX takes the bicubic generator with its upsampling as fixed convolutions
    (onnxruntime's cubic Resize is slow): the same numbers, odd sizes and borders included."""
    from training.networks import Bicubic2x, build_generator, exportable
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 12)
    ref = torch.nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)(x)
    assert torch.allclose(Bicubic2x(5)(x), ref, atol=1e-5)
    net = build_generator(1, 8, arch).eval()
    alt = exportable(net)
    assert (alt is net) == (arch != "bicubic")
    assert any(isinstance(m, Bicubic2x) for m in alt.modules()) == (arch == "bicubic")
    assert alt.state_dict().keys() == net.state_dict().keys()
    img = torch.randn(1, 3, 36, 44)
    with torch.no_grad():
        assert torch.allclose(alt(img), net(img), atol=1e-5)
    assert any(isinstance(m, torch.nn.Upsample) for m in net.modules()) == (arch != "reference")


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


# ----------------------------------------------------------------- damaged checkpoints, stale temps, log replay
def _small(tmp_path: Path, out: str = "run", **kw) -> TrainConfig:
    """Random images (no CUFS): 2 per domain, so 2 steps per epoch; log every step."""
    data = tmp_path / "data"
    if not (data / "trainA").is_dir():
        write_images(data / "trainA", 2, seed=1)
        write_images(data / "trainB", 2, seed=2)
    base = dict(out=str(tmp_path / out), data=str(data), size=32, blocks=1, ngf=8, ndf=8,
                holdout=0, epochs=3, log_every=1, progress=False, fit_detector=False, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def _rewrite(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file, as a copy would: not in place, where it would pull
    the pages from under a live memory map of it (safetensors maps what it loads)."""
    tmp = path.with_name("damaged.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _truncate(path: Path, keep: float = 0.5) -> None:
    """A copy cut short (full disk, interrupted transfer)."""
    data = path.read_bytes()
    _rewrite(path, data[: int(len(data) * keep)])


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (out / "log.jsonl").read_text().splitlines()]


def _meta(step: int) -> dict:
    meta = {k: {} for k in ckpt.STATE_KEYS}
    meta.update(epoch=0, global_step=step)
    return meta


def _damage(path: Path, how: str) -> None:
    from safetensors.torch import save_file
    if how == "truncated":
        _truncate(path)
    elif how == "empty":
        _rewrite(path, b"")
    elif how == "flipped":  # same length, header intact: only the sha256 can tell
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        _rewrite(path, bytes(data))
    elif how == "flipped-meta":  # a digit of global_step in the header's JSON: still valid JSON
        data = path.read_bytes()
        assert data.count(b'global_step\\": 2') == 1
        _rewrite(path, data.replace(b'global_step\\": 2', b'global_step\\": 7'))
    elif how == "no-metadata":
        save_file({"w": torch.zeros(3)}, str(path))
    elif how == "bad-json":
        save_file({"w": torch.zeros(3)}, str(path), metadata={"facesketch_state": "{not json"})
    elif how == "incomplete-metadata":
        save_file({"w": torch.zeros(3)}, str(path),
                  metadata={"facesketch_state": json.dumps({"epoch": 1})})


def test_save_state_keeps_the_previous_state_and_a_digest(tmp_path):
    path = tmp_path / ckpt.STATE_FILE
    step = torch.tensor(3.0)  # a 0-d tensor, like Adam's step
    ckpt.save_state(path, {"w": torch.arange(6.0), "step": step}, _meta(1))
    assert not (tmp_path / ckpt.PREV_STATE_FILE).exists()
    ckpt.save_state(path, {"w": torch.arange(6.0) * 2, "step": step}, _meta(2))
    prev = tmp_path / ckpt.PREV_STATE_FILE
    assert ckpt.load_state(path)[1]["global_step"] == 2
    tensors, meta = ckpt.load_state(prev)
    assert meta["global_step"] == 1 and torch.equal(tensors["w"], torch.arange(6.0))
    raw = ckpt.read_metadata(path)
    assert raw[ckpt.STATE_DIGEST] == ckpt.state_digest(ckpt.load_state(path)[0], raw[ckpt.STATE_META])
    ckpt.save_state(path, {"w": torch.zeros(2)}, _meta(3), keep_previous=False)
    assert ckpt.load_state(prev)[1]["global_step"] == 1  # not rotated
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.PREV_STATE_FILE, ckpt.STATE_FILE]


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped", "flipped-meta", "no-metadata",
                                 "bad-json", "incomplete-metadata"])
def test_damaged_state_falls_back_to_the_previous_one(tmp_path, caplog, how):
    import re
    path = tmp_path / ckpt.STATE_FILE
    ckpt.save_state(path, {"w": torch.arange(1000.0)}, _meta(1))
    ckpt.save_state(path, {"w": torch.arange(1000.0) + 1}, _meta(2))
    assert ckpt.load_resume_state(path)[2] == path
    _damage(path, how)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(str(path))) as err:
        ckpt.load_state(path)
    assert not isinstance(err.value, ckpt.SafetensorError)
    with caplog.at_level("WARNING"):
        tensors, meta, used = ckpt.load_resume_state(path)
    assert used == tmp_path / ckpt.PREV_STATE_FILE and meta["global_step"] == 1
    assert torch.equal(tensors["w"], torch.arange(1000.0))
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and str(path) in warning[0] and "previous state" in warning[0]
    if how.startswith("flipped"):
        assert "sha256" in warning[0]


def test_resume_after_truncated_state_continues_from_the_previous_one(tmp_path, caplog):
    import logging
    out = train(_small(tmp_path, max_steps=4))           # saves at step 2 and step 4
    state, prev = out / ckpt.STATE_FILE, out / ckpt.PREV_STATE_FILE
    assert ckpt.load_state(prev)[1]["global_step"] == 2
    straight = {k: v.clone() for k, v in _state(out).items()}
    _truncate(state)
    with caplog.at_level(logging.INFO):
        train(_small(tmp_path, max_steps=4, resume=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(state) in w and "truncated or corrupt" in w for w in warnings), warnings
    assert "(global 2)" in caplog.text                    # resumed from state.prev's step
    assert ckpt.load_state(state)[1]["global_step"] == 4
    # the damaged file was not kept as state.prev over the good one
    assert ckpt.load_state(prev)[1]["global_step"] == 2
    resumed = _state(out)
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
    assert _steps(out) == [1, 2, 3, 4]


def test_resume_takes_the_runs_own_options_and_logs_what_changes(tmp_path, caplog):
    """`facesketch train --out RUN --resume` alone continues the same recipe (the data,
    loss weights and learning rate it started with, not the defaults); an option given
    changes it, and the change is logged."""
    import argparse
    import logging
    from training.config import add_train_arguments, config_from_args
    out = train(_small(tmp_path, max_steps=2, lr=1e-3, lambda_gan=2.0, lambda_pair_grad=3.0,
                       seed=9))
    p = argparse.ArgumentParser()
    add_train_arguments(p)

    def parsed(*argv: str) -> TrainConfig:
        return config_from_args(p.parse_args(["--out", str(out), *argv]))

    cfg = parsed("--resume", "--max-steps", "4")
    assert (cfg.data, cfg.size, cfg.blocks, cfg.ngf, cfg.epochs) == (
        str(tmp_path / "data"), 32, 1, 8, 3)
    assert (cfg.lr, cfg.lambda_gan, cfg.lambda_pair_grad, cfg.seed) == (1e-3, 2.0, 3.0, 9)
    assert (cfg.max_steps, cfg.resume, cfg.out) == (4, True, str(out))
    assert parsed("--resume", "--lr", "5e-4").lr == 5e-4         # given beats saved
    assert parsed().lr == TrainConfig.lr and parsed().data is None  # no --resume: defaults
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert "options changed from the run's start: max_steps 2 -> 4" in caplog.text
    assert ckpt.load_state(out / ckpt.STATE_FILE)[1]["global_step"] == 4


def test_resume_with_both_states_damaged_names_both(tmp_path):
    out = train(_small(tmp_path, max_steps=4))
    _truncate(out / ckpt.STATE_FILE)
    _truncate(out / ckpt.PREV_STATE_FILE, 0.9)
    with pytest.raises(ckpt.CheckpointError) as err:
        train(_small(tmp_path, max_steps=6, resume=True))
    msg = str(err.value)
    assert str(out / ckpt.STATE_FILE) in msg and str(out / ckpt.PREV_STATE_FILE) in msg
    assert "another --out" in msg and "delete" in msg
    with pytest.raises(ckpt.CheckpointError, match="already holds a run"):  # no silent restart
        train(_small(tmp_path, max_steps=6))


def test_truncated_or_corrupt_model_files_are_checkpoint_errors(tmp_path):
    from training.networks import build_generator
    good = ckpt.save_model(tmp_path / "good", build_generator(1, 8), build_generator(1, 8),
                           ckpt.model_config(1, 8, 32))
    ckpt.load_model(good)
    import shutil
    bad = shutil.copytree(good, tmp_path / "bad")
    _truncate(bad / ckpt.MODEL_FILE)
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt") as err:
        ckpt.load_model(bad)
    assert str(bad / ckpt.MODEL_FILE) in str(err.value)
    assert not isinstance(err.value, ckpt.SafetensorError)
    (bad / ckpt.CONFIG_FILE).unlink()                     # config then comes from the header
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.read_config(bad)
    nojs = shutil.copytree(good, tmp_path / "badjson")
    _truncate(nojs / ckpt.CONFIG_FILE)
    with pytest.raises(ckpt.CheckpointError, match="model.json is corrupt"):
        ckpt.read_config(nojs)


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    stale = [run / f".state.safetensors.tmp{dead.pid}",
             run / "best" / f".model.safetensors.tmp{dead.pid}",
             run / f".model.json.tmp{os.getpid()}"]     # our own pid is not writing at start
    live = run / f".model.safetensors.tmp{os.getppid()}"   # a running process: left alone
    others = [run / ".notes.tmpx", run / "keep.tmp123", run / ".x.tmp12.bak"]
    for f in stale + [live] + others:
        f.write_bytes(b"\0" * 1000)
    with caplog.at_level("WARNING"):
        train(_small(tmp_path, epochs=1, max_steps=1))
    for f in stale:
        assert not f.exists(), f
        assert any(str(f) in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)
    assert live.exists() and any(str(live) in r.getMessage() for r in caplog.records)
    assert all(f.exists() for f in others)
    assert not any(".tmp" in p.name and p not in [live] + others for p in run.rglob("*"))


def test_log_has_unique_steps_after_a_replay(tmp_path):
    out = train(_small(tmp_path, max_steps=4))
    assert _steps(out) == [1, 2, 3, 4]
    # kill -9 after steps 3-4 were logged but before their checkpoint: the state on disk
    # is still step 2's, and the log may end in a half-written line.
    import shutil
    shutil.copyfile(out / ckpt.PREV_STATE_FILE, out / ckpt.STATE_FILE)
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "global_st')
    train(_small(tmp_path, max_steps=5, resume=True))
    steps = _steps(out)                                   # every line parses, too
    assert steps == [1, 2, 3, 4, 5] and len(steps) == len(set(steps))


def test_training_normalisation_agrees_with_the_runtime():
    """training.data.to_float/to_uint8 (torch, on the training device) and
    facesketch.imageio.normalize/denormalize (numpy, runtime and export) are one mapping."""
    from facesketch.imageio import denormalize, normalize
    from training.checkpoint import NORMALIZATION
    from training.data import to_float, to_uint8
    u8 = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    x = normalize(u8, NORMALIZATION)
    t = to_float(torch.from_numpy(u8).permute(0, 3, 1, 2))
    assert np.allclose(x, t.numpy(), atol=1e-6)
    assert np.array_equal(denormalize(x, NORMALIZATION), to_uint8(t).permute(0, 2, 3, 1).numpy())


def test_shift_consistency_loss_sees_a_grid_locked_pattern_not_the_image(tmp_path):
    """shift_difference is 0 for an output that moves with its input and not for a dot
    pattern locked to the pixel grid; the trainer adds the term only when asked for,
    with one more generator pass on the moved inputs, and draws the shift reproducibly."""
    from training.losses import shift_difference, shift_image
    from training.trainer import LOSS_NAMES
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    dots = torch.zeros(1, 1, 32, 32)
    dots[..., ::2, ::2] = 1.0
    for dy, dx in ((1, 0), (0, 1), (3, 3)):
        moved = shift_image(x, dy, dx)
        assert torch.equal(moved[..., dy:, dx:], x[..., :32 - dy, :32 - dx])
        assert shift_difference(x, moved, (dy, dx)).item() == 0.0
        assert shift_difference(x + dots, moved + dots, (dy, dx)).item() > 0.2
    write_images(tmp_path / "p", 2, ext=".png", seed=1)
    write_images(tmp_path / "s", 2, ext=".png", seed=2)
    named = _first_step_losses(tmp_path, tmp_path / "p", tmp_path / "s", "lambda_shift", (0.0, 10.0))
    assert named[0.0]["shift"] == 0 and named[10.0]["shift"] > 0
    assert named[10.0]["G"] == pytest.approx(named[0.0]["G"] + named[10.0]["shift"], rel=1e-5)
    a = _pair_run(tmp_path, tmp_path / "p", tmp_path / "s", out=str(tmp_path / "a"), lambda_shift=1.0)
    b = _pair_run(tmp_path, tmp_path / "p", tmp_path / "s", out=str(tmp_path / "b"), lambda_shift=1.0)
    shifts = [a.draw_shift() for _ in range(40)]
    assert shifts == [b.draw_shift() for _ in range(40)]          # same seed, same shifts
    assert (0, 0) not in shifts and {s for s in shifts} <= {(i, j) for i in range(4) for j in range(4)}
    assert len(set(shifts)) > 5
