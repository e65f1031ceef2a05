"""Image-quality metrics as the face-sketch literature computes them (numpy/scipy).

SSIM follows Wang et al. (2004) and their reference MATLAB ssim_index: luma
from RGB by the ITU-R BT.601 weights MATLAB's rgb2gray uses, an 11x11 Gaussian
window with sigma 1.5, K1=0.01, K2=0.03, data range 255, the population
(not sample) covariance, and only the window positions fully inside the image
('valid' filtering).

FSIM and FSIMc follow Zhang, Zhang, Mou and Zhang (IEEE TIP 2011) and their
reference FeatureSIM.m / phasecong2.m: phase congruency from log-Gabor filters
(4 scales, 4 orientations, shortest wavelength 6, scale factor 2, sigmaOnf
0.55, dThetaOnSigma 1.2, noise k 2.0) computed with FFTs, Scharr gradients,
T1=0.85, T2=160; FSIMc adds the I and Q channels of YIQ (T3=T4=200,
lambda=0.03). Images are first averaged and subsampled by
F = max(1, round(min(rows, cols) / 256)), so at CUFS's 200x250 F = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

LUMA = np.array([0.2989, 0.5870, 0.1140])


def to_gray(img: np.ndarray) -> np.ndarray:
    """HxW or HxWx3 (uint8 or float in 0..255) -> float64 HxW luma in 0..255."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        if a.shape[2] == 1:
            return a[:, :, 0]
        return a[:, :, :3] @ LUMA
    if a.ndim != 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {a.shape}")
    return a


def _gauss_valid(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    y = ndimage.correlate1d(x, k, axis=0, mode="constant")
    y = ndimage.correlate1d(y, k, axis=1, mode="constant")
    return y[radius:-radius, radius:-radius]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two images of the same size (grayscale comparison)."""
    x, y = to_gray(a), to_gray(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of the same size, got {x.shape} and {y.shape}")
    if min(x.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {x.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _gauss_valid(x), _gauss_valid(y)
    sxx = _gauss_valid(x * x) - mx * mx
    syy = _gauss_valid(y * y) - my * my
    sxy = _gauss_valid(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


PSNR_IDENTICAL = 200.0  # reported when two outputs are bit-identical (PSNR would be infinite)


def model_psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of two model outputs in [-1, 1] (peak 2, so MSE 4 is 0 dB), capped at
    PSNR_IDENTICAL: the parity figure of export, bench and the benchmarks."""
    mse = float(np.mean((np.asarray(output, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return PSNR_IDENTICAL if mse == 0 else float(min(PSNR_IDENTICAL, 10 * np.log10(4.0 / mse)))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB over all channels; inf for identical inputs."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"PSNR needs arrays of the same shape, got {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


# --------------------------------------------------------------------- FSIM
# Zhang, Zhang, Mou, Zhang, "FSIM: A Feature Similarity Index for Image Quality
# Assessment", IEEE TIP 20(8), 2011, computed as their reference FeatureSIM.m and
# phasecong2.m do (Kovesi's phase congruency with log-Gabor filters).
_PC_SCALES, _PC_ORIENTS = 4, 4
_PC_MIN_WAVELENGTH, _PC_MULT = 6, 2
_PC_SIGMA_ONF, _PC_DTHETA_ON_SIGMA, _PC_K = 0.55, 1.2, 2.0
PC_EPS = 1e-4
_T1, _T2, _T3, _T4, _LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03
_YIQ = np.array([[0.299, 0.587, 0.114],     # the coefficients FeatureSIM.m uses
                 [0.596, -0.274, -0.322],
                 [0.211, -0.523, 0.312]])
SCHARR_X = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0
YIQ_Y = _YIQ[0]


def _freq_range(n: int) -> np.ndarray:
    """Frequencies normalised to +-0.5 as phasecong2/lowpassfilter set them up."""
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


_FILTER_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def log_gabor_bank(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(filters[o, s], EM_n[o], noise-sum terms[o]) for an image of this size (cached)."""
    key = (rows, cols)
    if key in _FILTER_CACHE:
        return _FILTER_CACHE[key]
    x, y = np.meshgrid(_freq_range(cols), _freq_range(rows))
    radius = np.sqrt(x ** 2 + y ** 2)
    theta = np.arctan2(-y, x)
    lp = np.fft.ifftshift(1.0 / (1.0 + (radius / 0.45) ** (2 * 15)))   # lowpassfilter(.45, 15)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    radius[0, 0] = 1.0
    sin_t, cos_t = np.sin(theta), np.cos(theta)
    log_gabor = []
    for s in range(_PC_SCALES):
        fo = 1.0 / (_PC_MIN_WAVELENGTH * _PC_MULT ** s)
        lg = np.exp(-(np.log(radius / fo)) ** 2 / (2 * np.log(_PC_SIGMA_ONF) ** 2)) * lp
        lg[0, 0] = 0.0
        log_gabor.append(lg)
    theta_sigma = np.pi / _PC_ORIENTS / _PC_DTHETA_ON_SIGMA
    filters = np.empty((_PC_ORIENTS, _PC_SCALES, rows, cols))
    em_n = np.empty(_PC_ORIENTS)
    noise_terms = np.empty((_PC_ORIENTS, 2))
    for o in range(_PC_ORIENTS):
        angl = o * np.pi / _PC_ORIENTS
        ds = sin_t * np.cos(angl) - cos_t * np.sin(angl)
        dc = cos_t * np.cos(angl) + sin_t * np.sin(angl)
        spread = np.exp(-np.abs(np.arctan2(ds, dc)) ** 2 / (2 * theta_sigma ** 2))
        for s in range(_PC_SCALES):
            filters[o, s] = log_gabor[s] * spread
        em_n[o] = float((filters[o, 0] ** 2).sum())
        ifft_filt = np.real(np.fft.ifft2(filters[o], axes=(-2, -1))) * np.sqrt(rows * cols)
        sum_an2 = float((ifft_filt ** 2).sum())
        sum_ai_aj = sum(float((ifft_filt[si] * ifft_filt[sj]).sum())
                        for si in range(_PC_SCALES - 1) for sj in range(si + 1, _PC_SCALES))
        noise_terms[o] = sum_an2, sum_ai_aj
    if len(_FILTER_CACHE) > 8:
        _FILTER_CACHE.clear()
    _FILTER_CACHE[key] = (filters, em_n, noise_terms)
    return filters, em_n, noise_terms


_FILTER32: dict[tuple[int, int], np.ndarray] = {}


def pc_noise_threshold(median_e2n, em_n: float, noise_terms: np.ndarray):
    """phasecong2's noise threshold for one orientation, from the median squared filter
    amplitude at the smallest scale (a float, or a tensor of them: torch uses this too)."""
    noise_power = (-median_e2n / np.log(0.5)) / em_n
    tau = ((2 * noise_power * noise_terms[0] + 4 * noise_power * noise_terms[1]) / 2) ** 0.5
    return (tau * np.sqrt(np.pi / 2) + _PC_K * np.sqrt(2 - np.pi / 2) * tau) / 1.7


def fsim_similarity(pc1, pc2, g1, g2):
    """FeatureSIM.m's per-pixel similarity S_L = S_PC * S_G and its weight PCm = max(PC1, PC2),
    of phase-congruency and gradient-magnitude maps (numpy arrays, or torch tensors: the
    training loss uses the same formula); FSIM = sum(S_L * PCm) / sum(PCm)."""
    pc_sim = (2 * pc1 * pc2 + _T1) / (pc1 ** 2 + pc2 ** 2 + _T1)
    g_sim = (2 * g1 * g2 + _T2) / (g1 ** 2 + g2 ** 2 + _T2)
    return g_sim * pc_sim, (pc1 + pc2 + abs(pc1 - pc2)) / 2


def phase_congruency(img: np.ndarray) -> np.ndarray:
    """Phase congruency map of a 2-D float image (phasecong2.m, the PC_2 measure).

    The 16 log-Gabor filterings (most of FSIM's time) run in complex64 and the
    per-scale arithmetic in float32, sums in float64: FSIM moves by under 1e-8 against
    an all-float64 computation on CUFS pairs, at about 1.5x the speed."""
    im = np.asarray(img, dtype=np.float64)
    rows, cols = im.shape
    filters, em_n, noise_terms = log_gabor_bank(rows, cols)
    f32 = _FILTER32.get((rows, cols))
    if f32 is None:
        if len(_FILTER32) > 8:
            _FILTER32.clear()
        f32 = _FILTER32[(rows, cols)] = filters.astype(np.float32)
    spectrum = sp_fft.fft2(im).astype(np.complex64)
    eo = sp_fft.ifft2(spectrum[None, None] * f32, axes=(-2, -1))      # [o, s, r, c]
    energy_all = np.zeros((rows, cols))
    an_all = np.zeros((rows, cols))
    eps = np.float32(PC_EPS)
    for o in range(_PC_ORIENTS):
        e, od = eo[o].real, eo[o].imag
        an = np.abs(eo[o])
        sum_e, sum_o = e.sum(axis=0), od.sum(axis=0)
        x_energy = np.sqrt(sum_e ** 2 + sum_o ** 2) + eps
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = (e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)).sum(axis=0, dtype=np.float64)
        # noise from the smallest scale: median of the squared amplitude (Rayleigh)
        median_e2n = float(np.median(an[0].astype(np.float64) ** 2))
        threshold = pc_noise_threshold(median_e2n, em_n[o], noise_terms[o])
        energy_all += np.maximum(energy - threshold, 0.0)
        an_all += an.sum(axis=0, dtype=np.float64)
    return energy_all / an_all


def same_padding(f: int) -> tuple[int, int]:
    """(before, after) padding of MATLAB's 'same' filtering with an f x f kernel (an even
    kernel sits one pixel off centre)."""
    return (f - 1) - f // 2, f // 2


def _downsample(x: np.ndarray, f: int) -> np.ndarray:
    """conv2(x, fspecial('average', f), 'same') then x(1:f:end, 1:f:end), as FeatureSIM.m."""
    if f == 1:
        return x
    before, after = same_padding(f)
    p = np.pad(x, ((before, after), (before, after)))
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = x.shape
    s = c[f:f + h, f:f + w] - c[:h, f:f + w] - c[f:f + h, :w] + c[:h, :w]
    return (s / (f * f))[::f, ::f]


def _gradient_magnitude(y: np.ndarray) -> np.ndarray:
    ix = ndimage.convolve(y, SCHARR_X, mode="constant")
    iy = ndimage.convolve(y, SCHARR_X.T, mode="constant")
    return np.sqrt(ix ** 2 + iy ** 2)


@dataclass
class FsimFeatures:
    """What FSIM needs of one image, computed once and reusable against any partner:
    the (downsampled) luma's phase congruency and gradient magnitude, and for colour
    images the I and Q chroma of YIQ. Build with ``fsim_features``."""

    shape: tuple[int, ...]
    pc: np.ndarray
    grad: np.ndarray
    i: np.ndarray | None = None
    q: np.ndarray | None = None


def _check_fsim_input(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3):
        raise ValueError(f"FSIM needs HxW or HxWx3 images, got shape {x.shape}")
    if min(x.shape[:2]) < 8:
        raise ValueError(f"FSIM needs images of at least 8x8, got {x.shape[1]}x{x.shape[0]}")
    return x


def fsim_factor(rows: int, cols: int) -> int:
    """FeatureSIM.m's subsampling factor F for an image of this size."""
    return max(1, round(min(rows, cols) / 256))


def fsim_features(img: np.ndarray) -> FsimFeatures:
    """FSIM features of an HxW (luma) or HxWx3 (RGB, luma = Y of YIQ) image, 0..255."""
    x = _check_fsim_input(np.asarray(img, dtype=np.float64))
    f = fsim_factor(*x.shape[:2])
    colour = x.ndim == 3
    y = _downsample(x @ _YIQ[0] if colour else x, f)
    feats = FsimFeatures(x.shape, phase_congruency(y), _gradient_magnitude(y))
    if colour:
        feats.i, feats.q = _downsample(x @ _YIQ[1], f), _downsample(x @ _YIQ[2], f)
    return feats


def fsim_from(a: FsimFeatures, b: FsimFeatures, chromatic: bool = False) -> tuple[float, float | None]:
    """(FSIM, FSIMc or None) of two images' features (FeatureSIM.m's two outputs)."""
    if a.shape != b.shape:
        raise ValueError(f"FSIM needs images of the same size, got {a.shape} and {b.shape}")
    pc1, pc2, g1, g2 = a.pc, b.pc, a.grad, b.grad
    s_l, pcm = fsim_similarity(pc1, pc2, g1, g2)
    sim = s_l * pcm
    gray_score = float(sim.sum() / pcm.sum())
    if not chromatic:
        return gray_score, None
    if a.i is None or b.i is None:
        raise ValueError("FSIMc needs colour (HxWx3) images; use fsim for grayscale")
    s_i = (2 * a.i * b.i + _T3) / (a.i ** 2 + b.i ** 2 + _T3)
    s_q = (2 * a.q * b.q + _T4) / (a.q ** 2 + b.q ** 2 + _T4)
    # MATLAB: real((S_I .* S_Q) .^ lambda): a negative product has a complex power
    sim = sim * np.real(np.power((s_i * s_q).astype(np.complex128), _LAMBDA))
    return gray_score, float(sim.sum() / pcm.sum())


def _fsim(a: np.ndarray, b: np.ndarray, chromatic: bool) -> tuple[float, float | None]:
    """(FSIM, FSIMc or None) sharing one pair of phase-congruency maps."""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"FSIM needs images of the same size, got {x.shape} and {y.shape}")
    if chromatic and _check_fsim_input(x).ndim != 3:
        raise ValueError("FSIMc needs colour (HxWx3) images; use fsim for grayscale")
    return fsim_from(fsim_features(x), fsim_features(y), chromatic)


def fsim(a: np.ndarray, b: np.ndarray) -> float:
    """FSIM (grayscale) of two images of the same size, values 0..255.

    Colour inputs are compared on their luma (Y of YIQ), as FeatureSIM.m's
    first output does. 1.0 for identical images.
    """
    return _fsim(a, b, chromatic=False)[0]


def fsimc(a: np.ndarray, b: np.ndarray) -> float:
    """FSIMc of two RGB images of the same size (values 0..255): FSIM times the
    chromatic similarity of the I and Q channels of YIQ, as FeatureSIM.m's FSIMc."""
    return _fsim(a, b, chromatic=True)[1]  # type: ignore[return-value]


def fsim_and_fsimc(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(FSIM, FSIMc) of two RGB images at the cost of one (shared phase congruency)."""
    g, c = _fsim(a, b, chromatic=True)
    return g, c  # type: ignore[return-value]


# ------------------------------------------------------------------ checkerboard
CHECKER_PERIODS = (2, 4)
_CHECKER_D = np.arange(-6, 7)
_CHEB = np.maximum(np.abs(_CHECKER_D)[:, None], np.abs(_CHECKER_D)[None, :])
CHECKER_CORE, CHECKER_RING = _CHEB <= 1, (_CHEB >= 3) & (_CHEB <= 6)


def checker_bins(h: int, w: int, periods: tuple[int, ...] = CHECKER_PERIODS
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row indices, column indices) of the 13x13 spectrum patch around each frequency
    the checkerboard measure looks at: H/p and W/p cycles along each axis and on the
    diagonal, for each period p. Shared with training's spectral loss."""
    out = []
    for p in periods:
        for fy, fx in ((h / p, 0.0), (0.0, w / p), (h / p, w / p)):
            out.append(((int(round(fy)) + _CHECKER_D) % h, (int(round(fx)) + _CHECKER_D) % w))
    return out


def checkerboard_parts(img: np.ndarray, periods: tuple[int, ...] = CHECKER_PERIODS) -> list[float]:
    """The checkerboard measure's terms, in dB: for each period (in order), the frequency
    along the rows (vertical), along the columns (horizontal) and on the diagonal
    (checker_bins' order). ``checkerboard_db`` is their mean."""
    g = to_gray(img)
    h, w = g.shape
    if min(h, w) < 16:
        raise ValueError(f"checkerboard measure needs at least 16x16 pixels, got {w}x{h}")
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(sp_fft.fft2((g - g.mean()) * win)) ** 2
    out = []
    for rows, cols in checker_bins(h, w, periods):
        patch = power[np.ix_(rows, cols)]
        ratio = (patch[CHECKER_CORE].mean() + 1e-12) / (patch[CHECKER_RING].mean() + 1e-12)
        out.append(float(10 * np.log10(ratio)))
    return out


def checkerboard_db(img: np.ndarray, periods: tuple[int, ...] = CHECKER_PERIODS) -> float:
    """Spectral energy at an upsampling grid's frequencies against their neighbours, in dB.

    The dot pattern of stride-2 transposed convolutions (Odena et al., 2016) repeats
    every 2 output pixels (the last 2x upsampling) and every 4 (the one before), so
    its power sits at H/p and W/p cycles along each axis and on the diagonal. For
    each period p and each of those three frequencies: the mean power of the 3x3
    bins there over the mean power of the ring 3..6 bins away (Chebyshev distance),
    on the Hann-windowed luma; the result is the mean of those ratios in dB. A
    smooth or noise-like spectrum scores about 0 dB, a visible dot pattern 10 dB or
    more. Measure outputs on the model's own pixel grid (before any resize) and
    compare with targets brought to that grid.
    """
    return float(np.mean(checkerboard_parts(img, periods)))


# ------------------------------------------------------------------ cross-hatch
CROSS_SCALES = (0, 1)   # the log-Gabor bank's two finest scales: wavelengths 6 and 12 px
CROSS_WINDOW = 9        # pixels: the neighbourhood over which energies are averaged


def cross_hatch(img: np.ndarray) -> float:
    """Share of fine-scale oriented energy that crosses itself (0..0.5).

    A pencil stroke or a hair strand has one direction; a regular lattice (a crossing
    mesh such as a generator can draw for hair it cannot place) has two at once. On the
    luma's responses to FSIM's log-Gabor bank at its two finest scales (wavelengths 6 and
    12 px; 4 orientations 45 degrees apart), with energy averaged over 9x9 neighbourhoods:
    sum over pixels of min(E_0, E_90) + min(E_45, E_135), over the sum of all four. One
    direction scores about 0.15 (the filters are broad), isotropic noise about 0.4, a
    diagonal lattice about 0.5. CUFS artist sketches score about 0.19. Measure outputs on
    the model's own pixel grid, targets brought to it, as for the checkerboard measure.
    Training's cross-hatch loss (training.losses.cross_hatch) is this in torch.
    """
    g = to_gray(img) / 255.0
    h, w = g.shape
    if min(h, w) < 16:
        raise ValueError(f"cross-hatch measure needs at least 16x16 pixels, got {w}x{h}")
    filt = log_gabor_bank(h, w)[0][:, list(CROSS_SCALES)]
    eo = sp_fft.ifft2(sp_fft.fft2(g)[None, None] * filt, axes=(-2, -1))
    energy = (eo.real ** 2 + eo.imag ** 2).sum(1)                    # orientation x H x W
    count = ndimage.uniform_filter(np.ones((h, w)), CROSS_WINDOW, mode="constant")
    local = np.stack([ndimage.uniform_filter(e, CROSS_WINDOW, mode="constant") / count
                      for e in energy])
    crossing = np.minimum(local[0], local[2]) + np.minimum(local[1], local[3])
    return float(crossing.sum() / max(local.sum(), 1e-20))


# ------------------------------------------------------------------ stroke distance
TENSOR_GRAD_SIGMA = 1.0    # pixels: Gaussian blur of the luma before its gradients
TENSOR_WINDOW_SIGMA = 3.0  # pixels: Gaussian window over which the tensor is averaged


def structure_tensor(img: np.ndarray) -> np.ndarray:
    """Local linear structure tensor of an image: 3 x H x W maps (|g| cos 2t, |g| sin 2t,
    |g|), t the luma gradient's angle (luma in 0..1 blurred by TENSOR_GRAD_SIGMA, central
    differences, edges repeated), averaged over a Gaussian window of sigma
    TENSOR_WINDOW_SIGMA (about one period of the lattice a generator draws in hair).

    Weighted by |g| rather than |g|^2 (the classic tensor), so faint hatching counts
    beside dark contours. The first two maps are the doubled-angle orientation vector:
    strokes of one direction add up, two crossing directions (a lattice) cancel; the
    third, the local gradient energy, sees both. training.losses.structure_tensor is
    this in torch."""
    y = ndimage.gaussian_filter(to_gray(img) / 255.0, TENSOR_GRAD_SIGMA, mode="mirror", truncate=3.0)
    yp = np.pad(y, 1, mode="edge")
    gx = 0.5 * (yp[1:-1, 2:] - yp[1:-1, :-2])
    gy = 0.5 * (yp[2:, 1:-1] - yp[:-2, 1:-1])
    m = np.sqrt(gx ** 2 + gy ** 2 + 1e-8)
    return np.stack([ndimage.gaussian_filter(c, TENSOR_WINDOW_SIGMA, mode="mirror", truncate=3.0)
                     for c in ((gx ** 2 - gy ** 2) / m, 2.0 * gx * gy / m, m)])


def stroke_distance(generated: np.ndarray, target: np.ndarray) -> float:
    """Mean L1 between the structure tensors (``structure_tensor``) of two images of one
    size, over the target's mean gradient energy: 0 for the same strokes, low for strokes
    of the same directions drawn a pixel or two apart (free of phase, unlike SSIM and
    FSIM), about 1.2 for a crossing lattice against strands, about 2 for a blank or
    strands across them."""
    if np.shape(generated)[:2] != np.shape(target)[:2]:
        raise ValueError(f"stroke distance needs images of one size, got {np.shape(generated)[:2]} "
                         f"and {np.shape(target)[:2]}")
    tg, tt = structure_tensor(generated), structure_tensor(target)
    return float(np.abs(tg - tt).sum(0).mean() / max(float(tt[2].mean()), 1e-6))
