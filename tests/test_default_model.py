"""The embedded default model: small, complete, and better than doing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesketch.imageio import decode
from facesketch.metrics import ssim
from facesketch.models import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").is_file(),
                                reason=f"no packaged model at {DEFAULT_MODEL}")


def test_packaged_model_is_small_fp16_and_carries_card_and_detector():
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.iterdir() if f.is_file())
    assert size <= 32_000_000
    cfg = json.loads((DEFAULT_MODEL / "model.json").read_text())
    assert cfg["dtype"] == "float16" and cfg["image_size"] >= 128
    assert cfg["arch"].get("upsample", "transpose") in ("resize", "bicubic", "transpose")
    assert cfg["detector"] and "non-commercial" in cfg["card"]["terms"]
    assert (DEFAULT_MODEL / "MODEL_CARD.md").read_text().count("non-commercial") >= 1


@pytest.mark.cufs
def test_default_model_moves_a_cufs_photo_towards_its_artist_sketch(cufs):
    pytest.importorskip("torch")
    from runtime import Translator
    t = Translator.load(DEFAULT_MODEL, backend="torch")
    better = 0
    names = ["1.jpg", "2.jpg", "3.jpg", "50.jpg", "120.jpg", "200.jpg"]
    for name in names:
        photo = decode(cufs / "test_photos" / name)
        sketch = decode(cufs / "test_sketches" / name)
        r = t.translate(photo)
        assert r.direction == "photo2sketch" and r.domain == "photo"
        assert r.image.shape == photo.shape
        better += ssim(r.image, sketch) > ssim(photo, sketch)
    assert better == len(names)
    back = t.translate(decode(cufs / "test_sketches" / "1.jpg"))
    assert back.direction == "sketch2photo" and back.domain == "sketch"
    # A generated photo has colour; the sketch it came from has (almost) none.
    spread = np.ptp(back.image.astype(int), axis=2).mean()
    assert spread > 10


@pytest.mark.cufs
@pytest.mark.slow
def test_default_model_beats_doing_nothing_on_cufs_test(cufs):
    """FSIM and SSIM of both directions above the untranslated input's, on 24 CUFS test
    pairs spread over its subsets (CUHK student, AR, XM2VTS)."""
    pytest.importorskip("torch")
    from app.evaluate import evaluate
    names = [f"{i}.jpg" for i in np.linspace(1, 338, 24).round().astype(int)]
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("test_photos", "test_sketches"):
            (Path(tmp) / sub).mkdir()
            for n in names:
                shutil.copy(cufs / sub / n, Path(tmp) / sub / n)   # a temporary subset, deleted after
        report = evaluate(DEFAULT_MODEL, tmp, backend="torch", per_image=False,
                          progress=lambda done, total: None)
    for direction in ("photo2sketch", "sketch2photo"):
        ours, nothing = report["metrics"][direction]["all"], report["input_vs_target"][direction]["all"]
        assert ours["fsim"] > nothing["fsim"], (direction, ours["fsim"], nothing["fsim"])
        assert ours["ssim"] > nothing["ssim"], (direction, ours["ssim"], nothing["ssim"])


def test_model_card_names_the_recipe_and_the_validation_basis():
    pytest.importorskip("torch")
    from app.package import model_card
    hist = {"epoch": 2, "lr": 1e-4, "ssim_photo2sketch": 0.5, "fsim_photo2sketch": 0.8,
            "fsim_sketch2photo": 0.8, "native_fsim_photo2sketch": 0.77, "native_fsim_sketch2photo": 0.81}
    cfg = {"arch": {"blocks": 6, "ngf": 32, "upsample": "resize"}, "image_size": 192,
           "train": {"lambda_pair": 10, "lambda_pair_fsim": 30, "batch_size": 1, "lr": 1e-4},
           "data": {"train_pairs": 256, "train_photos": 256, "train_sketches": 256, "held_out": ["1"]},
           "card": {"validation_history": [hist]}}
    card = model_card(cfg, None)
    assert "paired L1 x10 on the 256 pairs, paired FSIM loss (1 - FSIM) x30" in card
    assert "at the files' own size" in card and "3: 1.0e-04, FSIM 0.770 / 0.810" in card
    del hist["native_fsim_photo2sketch"]          # an older run: the model's grid, said so
    card = model_card(cfg, None)
    assert "192x192 canvas" in card and "FSIM 0.800 / 0.800" in card and "x30" in card
    assert "spectral" not in card
    cfg["train"]["lambda_spectral"] = 0.2                 # v7's: the spectral loss is named
    assert "spectral loss (checkerboard terms above the real images') x0.2" in model_card(cfg, None)


def test_package_takes_sketch2photo_from_another_run_of_the_same_network(tmp_path):
    torch = pytest.importorskip("torch")
    from app.package import package_model
    from training import checkpoint as ckpt
    from training.networks import build_generator

    def model(name: str, arch: str, seed: int) -> Path:
        torch.manual_seed(seed)
        cfg = ckpt.model_config(1, 8, 32, arch, train={"lr": 1e-4, "epochs": seed})
        return ckpt.save_model(tmp_path / name, build_generator(1, 8, arch),
                               build_generator(1, 8, arch), cfg)

    a, b = model("a", "bicubic", 1), model("b", "bicubic", 2)
    out = package_model(a, tmp_path / "out", detector="builtin", sketch2photo_from=b)
    nets, cfg = ckpt.load_model(out)
    src_a, src_b = ckpt.load_model(a)[0], ckpt.load_model(b)[0]
    for name, src in (("G_A", src_a), ("G_B", src_b)):
        for k, v in nets[name].state_dict().items():   # fp16 in the package
            assert torch.equal(v, src[name].state_dict()[k].half().float()), (name, k)
    assert cfg["sketch2photo_from"]["model"] == str(b)
    assert "sketch -> photo generator (G_B) comes from another fine-tune" in \
        (out / "MODEL_CARD.md").read_text()
    # packaged again, G_B from that package: the card still names where G_B was trained
    again = package_model(a, tmp_path / "again", detector="builtin", sketch2photo_from=out)
    assert ckpt.load_model(again)[1]["sketch2photo_from"]["model"] == str(b)
    assert torch.equal(ckpt.load_model(again)[0]["G_B"].state_dict()["model.1.weight"],
                       nets["G_B"].state_dict()["model.1.weight"])
    with pytest.raises(ValueError, match="differs from"):
        package_model(a, tmp_path / "bad", detector="builtin",
                      sketch2photo_from=model("c", "resize", 3))
