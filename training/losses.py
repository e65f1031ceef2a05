"""Generator losses beyond the CycleGAN's own (which live in the trainer's step).

- ``gradient_l1``: paired L1 on finite differences (strokes where the artist drew them).
- ``feature_l1``: paired L1 on the discriminator's features (pix2pixHD's feature
  matching, Wang et al., 2018): a perceptual loss that needs no downloaded network.
- ``fsim``: FSIM (Zhang et al., 2011), the evaluation's structure measure, in torch and
  differentiable: a paired loss ``1 - FSIM`` on phase congruency and gradient magnitude.
- ``cross_hatch``: the cross-hatch measure of ``facesketch evaluate``
  (facesketch.metrics.cross_hatch) in torch; ``cross_excess`` penalises a translation's
  crossing oriented energy above its partner's at the same place: a paired FSIM loss
  alone let the generator draw a diagonal lattice where the artist drew hair strands.
- ``structure_tensor`` / ``tensor_l1``: the local stroke orientation and gradient energy
  of a translation against its partner's, free of phase: strands drawn a pixel or two
  from the artist's cost nearly nothing, a crossing lattice (no orientation) where the
  artist drew strands costs as much as a blank (``--lambda-tensor``).
- ``gaussian_blur``: what ``--fsim-blur`` applies before the FSIM loss.
- ``checkerboard_db``: the checkerboard measure of ``facesketch evaluate``
  (facesketch.metrics.checkerboard_db, same frequencies, window and bins), in
  torch and differentiable, per image. The spectral loss penalises a
  translation's excess over the real images of its domain in the same batch: a
  spectral regulariser against upsampling/downsampling grid artefacts, in the
  spirit of Durall et al., "Watch your Up-Convolution" (CVPR 2020).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facesketch.metrics import (CHECKER_CORE, CHECKER_RING, CROSS_SCALES, CROSS_WINDOW, LUMA,
                                PC_EPS, SCHARR_X, TENSOR_GRAD_SIGMA, TENSOR_WINDOW_SIGMA, YIQ_Y,
                                checker_bins, fsim_factor,
                                fsim_similarity, log_gabor_bank, pc_noise_threshold,
                                same_padding)


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean L1 between the horizontal and vertical finite differences of x and y."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return 0.5 * (dx.abs().mean((1, 2, 3)) + dy.abs().mean((1, 2, 3)))


def feature_l1(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample L1 between two lists of feature maps (one per discriminator layer),
    averaged over the layers."""
    if len(fake) != len(real) or not fake:
        raise ValueError(f"feature lists differ or are empty ({len(fake)} vs {len(real)})")
    return sum((f.float() - r.float()).abs().mean((1, 2, 3)) for f, r in zip(fake, real)) / len(fake)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W (C = 1 or 3) -> N x H x W float32 luma by facesketch.metrics.to_gray's
    weights, same scale."""
    x = x.float()
    if x.shape[1] == 3:
        return torch.einsum("nchw,c->nhw", x, torch.as_tensor(LUMA, dtype=x.dtype, device=x.device))
    return x[:, 0]


def _checker_powers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(core, ring) mean spectral power (N x T, one column per checkerboard term, in
    checker_bins' order) of an N x C x H x W batch (C = 1 or 3, any scale)."""
    g = _gray(x)
    n, h, w = g.shape
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=g.dtype, device=x.device),
                      torch.hann_window(w, periodic=False, dtype=g.dtype, device=x.device))
    g = (g - g.mean((1, 2), keepdim=True)) * win
    power = torch.fft.fft2(g).abs().square()
    core = torch.as_tensor(CHECKER_CORE, device=x.device)
    ring = torch.as_tensor(CHECKER_RING, device=x.device)
    cores, rings = [], []
    for rows, cols in checker_bins(h, w):
        r = torch.as_tensor(rows, device=x.device)[:, None]
        c = torch.as_tensor(cols, device=x.device)[None, :]
        patch = power[:, r, c]
        cores.append(patch[:, core].mean(1))
        rings.append(patch[:, ring].mean(1))
    return torch.stack(cores, 1), torch.stack(rings, 1)


def _db(p: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(p + 1e-12)


def checkerboard_terms(x: torch.Tensor, ring_grad: bool = True) -> torch.Tensor:
    """Per-image terms of the checkerboard measure (N x 6, dB; facesketch.metrics.
    checkerboard_parts in torch), differentiable. ``ring_grad=False`` detaches the
    neighbouring ring's power, the ratio's denominator: a loss then lowers the power at
    the grid's frequencies instead of raising it around them (ringing halos)."""
    core, ring = _checker_powers(x)
    return _db(core) - _db(ring if ring_grad else ring.detach())


def checkerboard_db(x: torch.Tensor, ring_grad: bool = True) -> torch.Tensor:
    """Per-image checkerboard measure (dB, the mean of its terms) of an N x C x H x W
    batch, as facesketch.metrics.checkerboard_db; differentiable."""
    return checkerboard_terms(x, ring_grad).mean(1)


def spectral_excess(fake: torch.Tensor, real: torch.Tensor, pin_ring: bool = False) -> torch.Tensor:
    """Per-image dB by which a translation's checkerboard terms exceed the real images'
    (each term on its own, 0 where it does not; the mean over the terms): one grid
    frequency in excess is not paid for by others below.

    ``pin_ring=False``: ``real`` is any batch of the target domain (its mean is the
    reference); the ring's power is detached, so the gradient lowers the power at the
    grid's frequencies - and a generator can do that by blurring everything.
    ``pin_ring=True``: ``real[i]`` is ``fake[i]``'s partner (same crop); the ring stays
    in the gradient and its level is held to the partner's (|dB difference| added), so
    the measure can be lowered neither by ringing around the grid's frequencies nor by
    blurring: only by less power at them."""
    core_f, ring_f = _checker_powers(fake)
    with torch.no_grad():
        core_r, ring_r = _checker_powers(real)
        want = _db(core_r) - _db(ring_r)
    if not pin_ring:
        want = want.mean(0, keepdim=True)
    loss = torch.relu(_db(core_f) - _db(ring_f if pin_ring else ring_f.detach()) - want)
    if pin_ring:
        loss = loss + (_db(ring_f) - _db(ring_r)).abs()
    return loss.mean(1)


def _cross_maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(crossing, total) local fine-scale oriented energy maps (N x H x W) of a batch in
    [-1, 1], as facesketch.metrics.cross_hatch computes them."""
    y = _luma255(x) / 255.0
    n, rows, cols = y.shape
    filt = torch.as_tensor(log_gabor_bank(rows, cols)[0][:, list(CROSS_SCALES)],
                           dtype=y.dtype, device=y.device)
    eo = torch.fft.ifft2(torch.fft.fft2(y)[:, None, None] * filt)          # N x O x S x H x W
    energy = (eo.real.square() + eo.imag.square()).sum(2)
    local = F.avg_pool2d(energy, CROSS_WINDOW, stride=1, padding=CROSS_WINDOW // 2,
                         count_include_pad=False)
    crossing = torch.minimum(local[:, 0], local[:, 2]) + torch.minimum(local[:, 1], local[:, 3])
    return crossing, local.sum(1)


def cross_hatch(x: torch.Tensor) -> torch.Tensor:
    """Per-image cross-hatch measure (facesketch.metrics.cross_hatch) of an N x C x H x W
    batch in [-1, 1], differentiable."""
    crossing, total = _cross_maps(x)
    return crossing.sum((1, 2)) / total.sum((1, 2)).clamp(min=1e-20)


def cross_excess(fake: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Per-pair crossing energy of a translation above its partner's at the same place
    (the artist's sketch, the real photo), over the translation's fine oriented energy.

    Local, so a lattice in the hair is not paid for by less crossing elsewhere (a whole-
    image ratio was: the mesh stayed), and relative to the partner, so crossing the
    artist drew costs nothing. The denominator carries no gradient: the loss lowers
    crossing energy rather than adding energy in one direction."""
    crossing, total = _cross_maps(fake)
    with torch.no_grad():
        target = _cross_maps(partner)[0]
    return torch.relu(crossing - target).sum((1, 2)) / total.detach().sum((1, 2)).clamp(min=1e-20)


def structure_tensor(x: torch.Tensor) -> torch.Tensor:
    """facesketch.metrics.structure_tensor of an N x C x H x W batch in [-1, 1], in torch
    and differentiable: N x 3 x H x W maps (|g| cos 2t, |g| sin 2t, |g|) averaged over a
    Gaussian window."""
    y = gaussian_blur(((_gray(x) + 1.0) * 0.5)[:, None], TENSOR_GRAD_SIGMA)
    yp = F.pad(y, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (yp[..., 1:-1, 2:] - yp[..., 1:-1, :-2])
    gy = 0.5 * (yp[..., 2:, 1:-1] - yp[..., :-2, 1:-1])
    m = (gx.square() + gy.square() + 1e-8).sqrt()
    t = torch.cat([(gx.square() - gy.square()) / m, 2.0 * gx * gy / m, m], 1)
    return gaussian_blur(t, TENSOR_WINDOW_SIGMA)


def tensor_l1(fake: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Per-pair L1 between the structure tensors (``structure_tensor``) of a translation
    and its partner, over the partner's mean gradient energy: the stroke distance of
    ``facesketch evaluate`` (facesketch.metrics.stroke_distance), in torch.

    Phase-free where FSIM and L1 are not: on strands (tests/test_training.py) the same
    strands moved by 1-3 px cost under 0.15, a diagonal lattice about 1.2, strands in
    another direction or a blank about 2. The paired FSIM loss alone rewarded the lattice
    (a hedge over strand positions); this rewards strands in the artist's direction
    wherever they lie."""
    tf = structure_tensor(fake)
    with torch.no_grad():
        tr = structure_tensor(partner)
    return (tf - tr).abs().sum(1).mean((1, 2)) / tr[:, 2].mean((1, 2)).clamp(min=1e-6)


def shift_image(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch moved down by dy and right by dx pixels (same size; the edge repeated)."""
    h, w = x.shape[-2:]
    return F.pad(x, (dx, 0, dy, 0), mode="replicate")[..., :h, :w]


def shift_difference(out: torch.Tensor, out_shifted: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Mean L1 between a generator's output and its output for the input moved by ``shift``
    (= (dy, dx), ``shift_image``), moved back: what follows the image cancels; a pattern
    locked to the network's own pixel grid (the dot grid of its up/downsampling, which
    the 4x4 shifts of a 2x2-strided network expose) does not. A margin of size/16 on every
    side (where the edge repetition differs) is left out."""
    dy, dx = shift
    h, w = out.shape[-2:]
    m = max(1, min(h, w) // 16)
    a = out[..., m:h - dy - m, m:w - dx - m]
    b = out_shifted[..., dy + m:h - m, dx + m:w - m]
    return (a.float() - b.float()).abs().mean()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 3 sigma, reflected borders) of an N x C x H x W batch."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t.square() / (2 * sigma ** 2))
    k = (k / k.sum()).repeat(x.shape[1], 1)[:, None]                        # C x 1 x K
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k[..., None, :], groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k[..., :, None], groups=x.shape[1])


def _luma255(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W in [-1, 1] (C = 1 or 3) -> N x H x W luma (Y of YIQ) in 0..255."""
    x = (x.float() + 1.0) * 127.5
    if x.shape[1] == 3:
        return torch.einsum("nchw,c->nhw", x, torch.as_tensor(YIQ_Y, dtype=x.dtype, device=x.device))
    return x[:, 0]


def phase_congruency(y: torch.Tensor) -> torch.Tensor:
    """Phase congruency (phasecong2's PC_2) of an N x H x W batch, differentiable: the
    same filters and arithmetic as facesketch.metrics.phase_congruency (the noise
    threshold, a median, carries no gradient)."""
    n, rows, cols = y.shape
    filters, em_n, noise_terms = log_gabor_bank(rows, cols)
    filt = torch.as_tensor(filters, dtype=y.dtype, device=y.device)          # O x S x H x W
    eo = torch.fft.ifft2(torch.fft.fft2(y)[:, None, None] * filt)           # N x O x S x H x W
    energy_all = y.new_zeros(y.shape)
    an_all = y.new_zeros(y.shape)
    for o in range(filt.shape[0]):
        e, od = eo[:, o].real, eo[:, o].imag
        an = (e.square() + od.square() + 1e-12).sqrt()
        sum_e, sum_o = e.sum(1), od.sum(1)
        x_energy = (sum_e.square() + sum_o.square() + 1e-12).sqrt() + PC_EPS
        mean_e, mean_o = (sum_e / x_energy)[:, None], (sum_o / x_energy)[:, None]
        energy = (e * mean_e + od * mean_o - (e * mean_o - od * mean_e).abs()).sum(1)
        median_e2n = an[:, 0].detach().square().flatten(1).quantile(0.5, dim=1)
        threshold = pc_noise_threshold(median_e2n, float(em_n[o]), noise_terms[o])
        energy_all = energy_all + torch.relu(energy - threshold[:, None, None])
        an_all = an_all + an.sum(1)
    return energy_all / an_all


def _fsim_maps(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(phase congruency, Scharr gradient magnitude) of an N x H x W luma batch, after
    FeatureSIM.m's averaging and subsampling."""
    f = fsim_factor(*y.shape[1:])
    if f > 1:  # MATLAB's 'same' averaging of an f x f kernel, then every f-th pixel
        before, after = same_padding(f)
        y = F.avg_pool2d(F.pad(y[:, None], (before, after, before, after)), f)[:, 0]
    k = torch.as_tensor(SCHARR_X, dtype=y.dtype, device=y.device)
    g = F.conv2d(y[:, None], torch.stack([k, k.T])[:, None], padding=1)
    return phase_congruency(y), (g.square().sum(1) + 1e-12).sqrt()


def fsim(x: torch.Tensor, y: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """Per-sample FSIM (grayscale; facesketch.metrics.fsim) of two N x C x H x W batches in
    [-1, 1], differentiable in both: ``1 - fsim`` is a paired loss on the features the
    evaluation scores (phase congruency, gradients) with no learned weights.

    ``pool`` > 1 takes the maximum of both images' phase-congruency and gradient maps over
    pool x pool neighbourhoods first: shift-tolerant. Exact FSIM rewards a regular lattice
    over hair strands drawn a pixel or two from the artist's (a hedge: some structure
    everywhere); pooled, strands of the artist's kind anywhere near the artist's score
    above a lattice, and both above a blank, while a blurred contour still loses to a sharp
    one (tests/test_training.py)."""
    (pc1, g1), (pc2, g2) = _fsim_maps(_luma255(x)), _fsim_maps(_luma255(y))
    if pool > 1:
        pc1, pc2, g1, g2 = (F.max_pool2d(t[:, None], pool, 1, pool // 2)[:, 0]
                            for t in (pc1, pc2, g1, g2))
    s_l, pcm = fsim_similarity(pc1, pc2, g1, g2)
    return (s_l * pcm).sum((1, 2)) / pcm.sum((1, 2)).clamp(min=1e-12)
