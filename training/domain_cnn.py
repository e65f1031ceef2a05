"""Fitting the built-in photo/sketch CNN (facesketch.domain's network) and writing it as ONNX.

A small convolutional network sees the detector's prepared image (borders trimmed,
short side 96 px, tone stretched: ``facesketch.domain.cnn_input``) and answers one
logit, sketch > 0. Global average and max pooling make it take any aspect ratio.
It is fitted on originals plus augmented copies (``training.detector.augment``:
grayscale and toned photos, white backdrops, tinted paper, faint scans, frames,
JPEG, rescaling; line drawings and pencil-filter drawings made from photos,
labelled sketch), each epoch on fresh random crops and flips.
``benchmarks/domain_detector.py --cnn`` runs it on CUFS train and the
even-numbered FS2K pairs and measures it on what it was not fitted on.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facesketch.domain import cnn_input

from .detector import augmented_set

log = logging.getLogger("facesketch.domain_cnn")

CNN_VERSION = 1
CROP = 88                # training crop (inference sees the whole prepared image)


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DomainNet(nn.Module):
    """Texture CNN: full-resolution first layer (pencil strokes are a pixel or two wide),
    four stride-2 stages, global average + max pooling, one logit (sketch > 0)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(*_block(3, w, 1), *_block(w, 2 * w, 2), *_block(2 * w, 2 * w, 1),
                                      *_block(2 * w, 4 * w, 2), *_block(4 * w, 4 * w, 2),
                                      *_block(4 * w, 6 * w, 2))
        self.head = nn.Linear(12 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return self.head(pooled)


def _crop(x: np.ndarray, rng: np.random.Generator, size: int = CROP) -> np.ndarray:
    """A random size x size crop (reflect-padded when the image is smaller), random h-flip."""
    _, h, w = x.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
        _, h, w = x.shape
    t, l = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    c = x[:, t:t + size, l:l + size]
    return c[:, :, ::-1] if rng.random() < 0.5 else c


class DomainEnsemble(nn.Module):
    """The mean logit of several DomainNets fitted from different seeds (one ONNX graph)."""

    def __init__(self, nets: Sequence[DomainNet]):
        super().__init__()
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _train_member(xs: list[np.ndarray], y: torch.Tensor, *, epochs: int, width: int, batch: int,
                  lr: float, seed: int) -> tuple[DomainNet, list[dict]]:
    rng = np.random.default_rng(seed + 1000)
    torch.manual_seed(seed)
    net = DomainNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(xs) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    history = []
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(len(xs))
        total, right, n = 0.0, 0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb = torch.from_numpy(np.stack([_crop(xs[j], rng) for j in idx]))
            yb = y[idx]
            logit = net(xb).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logit, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            right += int(((logit > 0).float() == yb).sum())
            n += len(idx)
        history.append({"epoch": epoch, "loss": round(total / n, 5), "crop_accuracy": round(right / n, 5)})
        log.info("domain CNN (seed %d) epoch %d: loss %.4f, crop accuracy %.4f", seed, epoch,
                 total / n, right / n)
    return net.eval(), history


def fit_cnn(photos: Sequence[np.ndarray], sketches: Sequence[np.ndarray], *, per_image: int = 6,
            epochs: int = 12, width: int = 16, members: int = 1, batch: int = 64, lr: float = 3e-3,
            seed: int = 0, threads: int | None = None) -> tuple[nn.Module, dict]:
    """Fit the CNN on photos and sketches (HxWx3 uint8 each) and their augmentations;
    ``members`` > 1 fits that many from seeds seed, seed+1, ... on the same samples and
    averages their logits (a DomainEnsemble).

    Returns (the network in eval mode, a JSON-serialisable summary)."""
    if not photos or not sketches:
        raise ValueError(f"fit_cnn needs photos and sketches, got {len(photos)} and {len(sketches)}")
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    images, labels = augmented_set(list(photos), list(sketches), per_image, rng)
    xs = [cnn_input(img) for img in images]
    t_prep = time.perf_counter() - t0
    y = torch.tensor(labels, dtype=torch.float32)
    nets, history = [], []
    for k in range(members):
        net, hist = _train_member(xs, y, epochs=epochs, width=width, batch=batch, lr=lr, seed=seed + k)
        nets.append(net)
        history.append(hist)
    model = nets[0] if members == 1 else DomainEnsemble(nets).eval()
    with torch.no_grad():   # whole prepared images, as at inference
        pred = np.array([float(model(torch.from_numpy(x)[None])) > 0 for x in xs])
    summary = {
        "version": CNN_VERSION, "width": width, "members": members, "epochs": epochs,
        "batch": batch, "lr": lr, "crop": CROP, "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "fitted_on": {"photos": len(photos), "sketches": len(sketches), "samples": len(xs),
                      "augmentations_per_image": per_image},
        "train_accuracy": {"photo": float((~pred[labels == 0]).mean()),
                           "sketch": float(pred[labels == 1].mean())},
        "seconds": {"prepare": round(t_prep, 1), "total": round(time.perf_counter() - t0, 1)},
        "history": history,
    }
    return model, summary
