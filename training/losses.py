"""Generator losses beyond the CycleGAN's own (which live in the trainer's step).

- ``gradient_l1``: paired L1 on finite differences (strokes where the artist drew them).
- ``feature_l1``: paired L1 on the discriminator's features (pix2pixHD's feature
  matching, Wang et al., 2018): a perceptual loss that needs no downloaded network.
- ``checkerboard_db``: the checkerboard measure of ``facesketch evaluate``
  (facesketch.metrics.checkerboard_db, same frequencies, window and bins), in
  torch and differentiable, per image. The spectral loss penalises a
  translation's excess over the real images of its domain in the same batch: a
  spectral regulariser against upsampling/downsampling grid artefacts, in the
  spirit of Durall et al., "Watch your Up-Convolution" (CVPR 2020).
"""

from __future__ import annotations

import torch

from facesketch.metrics import CHECKER_CORE, CHECKER_RING, LUMA, checker_bins


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


def checkerboard_db(x: torch.Tensor, ring_grad: bool = True) -> torch.Tensor:
    """Per-image checkerboard measure (dB) of an N x C x H x W batch (C = 1 or 3, any
    scale: the measure is a ratio); differentiable. ``ring_grad=False`` detaches the
    neighbouring ring's power, the ratio's denominator: a loss then lowers the power at
    the grid's frequencies instead of raising it around them (ringing halos)."""
    x = x.float()
    if x.shape[1] == 3:
        g = torch.einsum("nchw,c->nhw", x, torch.as_tensor(LUMA, dtype=x.dtype, device=x.device))
    else:
        g = x[:, 0]
    n, h, w = g.shape
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device),
                      torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device))
    g = (g - g.mean((1, 2), keepdim=True)) * win
    power = torch.fft.fft2(g).abs().square()
    core = torch.as_tensor(CHECKER_CORE, device=x.device)
    ring = torch.as_tensor(CHECKER_RING, device=x.device)
    ratios = []
    for rows, cols in checker_bins(h, w):
        r = torch.as_tensor(rows, device=x.device)[:, None]
        c = torch.as_tensor(cols, device=x.device)[None, :]
        patch = power[:, r, c]
        around = patch[:, ring].mean(1)
        ratios.append((patch[:, core].mean(1) + 1e-12)
                      / ((around if ring_grad else around.detach()) + 1e-12))
    return (10 * torch.log10(torch.stack(ratios, 1))).mean(1)


def spectral_excess(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-image dB by which a translation's checkerboard measure exceeds the mean of the
    real target-domain images beside it (0 where it does not). Its gradient acts on the
    power at the grid's frequencies only (the ring is detached)."""
    return torch.relu(checkerboard_db(fake, ring_grad=False)
                      - checkerboard_db(real).mean().detach())
