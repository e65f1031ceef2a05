"""SSIM, FSIM, FSIMc, PSNR: known values, ordering, and independent implementations.

References, computed live on the same images (not pasted numbers):
* SSIM vs scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255): the same definition, so they
  agree to floating-point precision (tolerance 1e-9).
* FSIM/FSIMc vs piq.fsim (an independent PyTorch port of FeatureSIM.m).
  Tolerances and why they are not zero:
  - FSIM (grayscale), 1e-4 (observed <= 4e-6 on CUFS): piq's torch.median
    takes the lower of the two middle values where MATLAB's median (and ours)
    averages them; piq also adds eps to the final phase-congruency ratio.
  - FSIMc, 1e-3 (observed <= 3e-4 on CUFS photo pairs, ours lower): the
    chromatic term. FeatureSIM.m computes real((S_I .* S_Q) .^ lambda); where
    S_I*S_Q < 0 (opposite hues) that is cos(lambda*pi) = 0.9956 times
    |S_I*S_Q|^lambda, and we follow MATLAB, whereas piq takes
    |S_I*S_Q|^lambda. piq also rounds the YIQ matrix differently (0.5959 vs
    0.596 ...). With piq's two conventions swapped in, ours matches to 2e-6.
  - Downsampling: FeatureSIM.m averages with conv2(..., 'same') and keeps
    every F-th sample; piq uses avg_pool2d. For F = 2 on even sizes these
    pick the same 2x2 blocks (checked below); for F >= 3 they are offset by a
    pixel, so piq differs from MATLAB there (we follow MATLAB).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
from PIL import Image

from facesketch.imageio import decode
from facesketch.metrics import fsim, fsimc, psnr, ssim, to_gray

PAIRS = ("1.jpg", "57.jpg", "230.jpg")      # CUHK student, AR, XM2VTS


def pattern(h=120, w=100, seed=0):
    """A smooth colour image with edges and texture (no data needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([120 + 80 * np.sin(xx / 9.0), 100 + 70 * np.cos(yy / 7.0),
                    90 + 60 * np.sin((xx + yy) / 13.0)], axis=2)
    img[30:70, 25:60] = (220, 60, 40)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def noisy(img, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def piq_fsim():
    """piq.fsim(a, b, chromatic) on uint8 HxWx3 arrays (grayscale: on their luma), loaded without piq/__init__.py (which imports torchvision for its
    deep-feature metrics; FSIM needs only torch)."""
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("piq")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("piq is not installed (make install puts it there: pip install --no-deps piq)")
    saved = {k: v for k, v in sys.modules.items() if k == "piq" or k.startswith("piq.")}
    pkg = types.ModuleType("piq")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["piq"] = pkg
    try:
        module = importlib.import_module("piq.fsim")
    finally:
        for k in [k for k in sys.modules if k == "piq" or k.startswith("piq.")]:
            del sys.modules[k]
        sys.modules.update(saved)

    def reference(a, b, chromatic):
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)          # tiny tensors: threads only add overhead on 2 cores
        try:
            x, y = (luma(a), luma(b)) if not chromatic else (a, b)
            return float(module.fsim(as_tensor(x), as_tensor(y), data_range=255, chromatic=chromatic))
        finally:
            torch.set_num_threads(threads)
    return reference


def as_tensor(a):
    import torch
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def luma(a):
    return np.asarray(a, np.float64) @ [0.299, 0.587, 0.114]


# ------------------------------------------------------------------ known values
def test_identical_images_score_one():
    a = pattern()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert fsim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert fsimc(a, a) == pytest.approx(1.0, abs=1e-12)
    assert fsim(to_gray(a), to_gray(a)) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a) == float("inf")


def test_more_noise_scores_lower():
    a = pattern()
    for metric in (ssim, fsim, fsimc, psnr):
        scores = [metric(a, noisy(a, s)) for s in (4, 12, 30, 60)]
        assert all(x > y for x, y in zip(scores, scores[1:])), (metric.__name__, scores)
    assert 0 < fsim(a, noisy(a, 60)) < fsim(a, noisy(a, 4)) < 1


def test_fsimc_sees_colour_that_fsim_ignores():
    a = pattern()
    b = a[:, :, ::-1].copy()                       # swap red and blue
    b_luma = np.repeat(to_gray(b)[:, :, None], 3, axis=2)
    assert fsimc(a, b) < fsim(a, b) <= 1.0
    assert fsim(b, b_luma) == pytest.approx(1.0, abs=2e-3)   # same luma up to rounding


def test_shape_errors():
    a = pattern()
    with pytest.raises(ValueError, match="same size"):
        fsim(a, a[:-1])
    with pytest.raises(ValueError, match="colour"):
        fsimc(to_gray(a), to_gray(a))
    with pytest.raises(ValueError, match="same size"):
        ssim(a, a[:, :-1])


# ------------------------------------------------------- independent references
def test_ssim_matches_scikit_image_on_synthetic_pairs():
    metrics = pytest.importorskip("skimage.metrics")
    a = pattern()
    for b in (noisy(a, 10), noisy(a, 40), pattern(seed=3)[:, ::-1]):
        ref = metrics.structural_similarity(to_gray(a), to_gray(b), gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=255)
        assert ssim(a, b) == pytest.approx(ref, abs=1e-9)


@pytest.mark.cufs
def test_ssim_matches_scikit_image_on_cufs(cufs):
    metrics = pytest.importorskip("skimage.metrics")
    for name in PAIRS:
        p, s = decode(cufs / "test_photos" / name), decode(cufs / "test_sketches" / name)
        ref = metrics.structural_similarity(to_gray(p), to_gray(s), gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=255)
        assert ssim(p, s) == pytest.approx(ref, abs=1e-9)


@pytest.mark.cufs
def test_fsim_matches_piq_on_cufs_grayscale_pairs(cufs):
    ref_fsim = piq_fsim()
    for name in PAIRS:
        p, s = decode(cufs / "test_photos" / name), decode(cufs / "test_sketches" / name)
        ref = ref_fsim(p, s, chromatic=False)
        assert fsim(p, s) == pytest.approx(ref, abs=1e-4), name
        assert 0.5 < ref < 0.9                          # a photo vs its sketch: similar, not equal


@pytest.mark.cufs
def test_fsimc_matches_piq_on_cufs_photo_pairs(cufs):
    ref_fsim = piq_fsim()
    for a_name, b_name in (("1.jpg", "2.jpg"), ("57.jpg", "58.jpg")):
        a, b = decode(cufs / "test_photos" / a_name), decode(cufs / "test_photos" / b_name)
        ref = ref_fsim(a, b, chromatic=True)
        ours = fsimc(a, b)
        assert ours == pytest.approx(ref, abs=1e-3)
        assert ours <= ref + 1e-6       # MATLAB's real part of a complex power is never larger


def test_fsim_downsampling_matches_piq_for_f2():
    """A 520x600 image is averaged over 2x2 blocks first (F = round(520/256) = 2)."""
    ref_fsim = piq_fsim()
    a = np.asarray(Image.fromarray(pattern(130, 150)).resize((600, 520), Image.BICUBIC))
    b = noisy(a, 15)
    ref = ref_fsim(a, b, chromatic=False)
    assert fsim(a, b) == pytest.approx(ref, abs=1e-4)


# ----------------------------------------------------------------- checkerboard measure
def _smooth(h: int = 96, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return 128 + 60 * np.sin(xx / 11.0) * np.cos(yy / 17.0) + 0.02 * (xx - w / 2) * (yy - h / 2) / 4


def test_checkerboard_is_high_on_a_dot_pattern_and_low_on_smooth_images():
    from facesketch.metrics import checkerboard_db
    smooth = _smooth()
    yy, xx = np.mgrid[0:smooth.shape[0], 0:smooth.shape[1]]
    dots2 = smooth + 20 * ((yy % 2 == 0) & (xx % 2 == 0))
    dots4 = smooth + 20 * ((yy % 4 == 0) & (xx % 4 == 0))
    noisy = smooth + np.random.default_rng(0).normal(0, 8, smooth.shape)
    assert checkerboard_db(smooth) < 3 and checkerboard_db(noisy) < 3
    assert checkerboard_db(dots2) > 10 and checkerboard_db(dots4) > 10
    assert checkerboard_db(np.dstack([dots2] * 3).astype(np.uint8)) > 10   # RGB works the same
    with pytest.raises(ValueError, match="16x16"):
        checkerboard_db(np.zeros((8, 40)))


def _strands_and_lattice(h: int = 96, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Near-vertical wavy strands (one direction, as hair an artist draws) and a diagonal
    lattice of about the same period (as a generator drew hair): 0..255."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    strands = np.sin(2 * np.pi * xx / 7 + 0.3 * np.sin(yy / 9))
    lattice = 0.5 * (np.sin(2 * np.pi * (xx + yy) / 9) + np.sin(2 * np.pi * (xx - yy) / 9))
    return 128 + 60 * strands, 128 + 60 * lattice


def test_cross_hatch_is_high_on_a_lattice_and_low_on_strokes_of_one_direction():
    from facesketch.metrics import cross_hatch
    strands, lattice = _strands_and_lattice()
    diagonal = 128 + 60 * np.sin(2 * np.pi * np.add.outer(np.arange(96), np.arange(80)) / 9)
    assert cross_hatch(strands) < 0.2 and cross_hatch(diagonal) < 0.2   # any one direction
    assert cross_hatch(lattice) > 0.45                                   # two at once
    assert cross_hatch(np.dstack([lattice] * 3)) == pytest.approx(cross_hatch(lattice), abs=1e-6)
    with pytest.raises(ValueError, match="16x16"):
        cross_hatch(np.zeros((8, 40)))


def test_stroke_distance_is_free_of_phase_and_high_on_a_lattice_against_strands():
    from facesketch.metrics import stroke_distance
    strands, lattice = _strands_and_lattice()
    moved = [stroke_distance(np.roll(strands, k, axis=1), strands) for k in (1, 2, 3)]
    across = 128 + 60 * np.sin(2 * np.pi * np.mgrid[0:96, 0:80][0] / 7)
    assert stroke_distance(strands, strands) == 0 and max(moved) < 0.15
    assert stroke_distance(lattice, strands) > 1.0
    assert stroke_distance(across, strands) > stroke_distance(lattice, strands)
    assert stroke_distance(np.full_like(strands, 200), strands) > stroke_distance(lattice, strands)
    assert stroke_distance(np.dstack([lattice] * 3), strands) == pytest.approx(
        stroke_distance(lattice, strands), rel=1e-4)                     # colour: its luma
    with pytest.raises(ValueError, match="one size"):
        stroke_distance(strands[:50], strands)


def test_checkerboard_parts_name_the_period_and_axis_of_a_pattern():
    from facesketch.metrics import checkerboard_db, checkerboard_parts
    noisy = _smooth() + np.random.default_rng(0).normal(0, 8, (96, 80))  # a flat spectrum
    yy = np.mgrid[0:96, 0:80][0]
    rows4 = noisy + 20 * np.cos(np.pi * yy / 2)   # a wave along the rows of period 4 only
    before, parts = checkerboard_parts(noisy), checkerboard_parts(rows4)
    assert len(parts) == 6 and checkerboard_db(rows4) == pytest.approx(np.mean(parts))
    # order: p2 vertical, horizontal, diagonal, then p4: only p4 vertical moves
    assert parts[3] > before[3] + 20 and parts[3] > 20
    assert np.allclose(np.delete(parts, 3), np.delete(before, 3), atol=0.5)


def test_checkerboard_tells_transposed_convolution_from_resize_convolution():
    """The motivation of the "resize" arch (Odena et al.'s demonstration): with the same
    uniform 3x3 kernel, a stride-2 ConvTranspose overlaps unevenly (output pixels get 1, 2
    or 4 contributions) and prints a dot pattern on a smooth input; a resize + the
    3x3 conv (bilinear, as the "resize" arch) does not."""
    torch = pytest.importorskip("torch")
    from facesketch.metrics import checkerboard_db
    torch.manual_seed(0)
    # a smooth picture with some fine texture, as real images have (a perfectly smooth one
    # makes any faint periodic residue stand out against an empty spectrum)
    img = _smooth(48, 40) + np.random.default_rng(1).normal(0, 3, (48, 40))
    x = torch.from_numpy(img).float()[None, None] / 255.0
    tconv = torch.nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
    rconv = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="bilinear"),
                                torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(1, 1, 3))
    with torch.no_grad():
        for m in (tconv, rconv[2]):
            m.weight.fill_(1.0)
            m.bias.zero_()
        a, b = tconv(x)[0, 0].numpy(), rconv(x)[0, 0].numpy()
    scale = lambda y: 255 * (y - y.min()) / (y.max() - y.min())  # noqa: E731
    assert checkerboard_db(scale(a)) > 10 > 3 > checkerboard_db(scale(b))
