"""TrainConfig: every option of a training run, typed and checked, declared once.

The command-line options of ``facesketch train`` (and of ``python -m training``,
the torchrun worker) are generated from these fields (facesketch.config.add_arguments):
a new option is one field here, with its help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from facesketch.config import ConfigError, check, choices, option


@dataclass
class TrainConfig:
    out: str = option("runs/default", "run folder, e.g. runs/NAME")
    data: Optional[str] = option(None, "folder in a known layout (CUFS, Kaggle, CycleGAN "
                                       "trainA/trainB)")
    photos: Optional[str] = option(None, "folder of photos (with --sketches, instead of --data)")
    sketches: Optional[str] = option(None, "folder of sketches")
    size: int = option(128, "image size the networks train at")
    blocks: int = option(3, "residual blocks in each generator")
    arch: str = choices("resize", "reference", "bicubic", default="resize",
                        help="generator upsampling: resize (bilinear resize + conv, no "
                             "checkerboard), reference (ConvTranspose, as the reference "
                             "CycleGAN) or bicubic (bicubic resize + conv: no period-2 kinks)")
    # Network widths (reference: 64)
    ngf: int = option(64, "generator filters in the first layer")
    ndf: int = option(64, "discriminator filters in the first layer")
    epochs: int = option(200, "epochs: constant learning rate for half, then linear decay")
    batch_size: int = option(1, "images per domain per step")
    max_images: Optional[int] = option(None, "use at most N images per domain")
    holdout: int = option(8, "images per domain held back for samples and validation")
    device: str = choices("auto", "cpu", "cuda", default="auto", help="where to train")
    precision: str = choices("auto", "fp32", "bf16", "fp16", default="auto",
                             help="auto: bf16 on GPUs that have it, else fp16 on GPUs, fp32 on CPU")
    compile: bool = option(False, "torch.compile G and D")
    # "reduce-overhead" captures CUDA graphs (batch-1 GPU steps are launch-bound),
    # "max-autotune" also autotunes kernels.
    compile_mode: str = choices("default", "reduce-overhead", "max-autotune", default="default",
                                help="torch.compile mode (reduce-overhead = CUDA graphs)")
    channels_last: Optional[bool] = option(None, "None: on for CUDA, off for CPU", flag=False)
    seed: int = option(0, "random seed (data order, augmentation, init)")
    resume: bool = option(False, "continue the run in --out exactly where it stopped")
    init: Optional[str] = option(None, "start both generators from this model (a run or model "
                                       "folder of the same --arch/--blocks/--ngf, e.g. "
                                       "facesketch/models/default); discriminators, optimizers "
                                       "and the schedule start fresh")
    lr: float = option(2e-4, "Adam learning rate")
    beta1: float = option(0.5, "Adam beta1")
    lambda_gan: float = option(1.0, "adversarial (LSGAN) loss weight of the generators: "
                                    "texture no paired loss can place (hair strands) is the "
                                    "discriminators' to judge")
    lambda_cycle: float = option(10.0, "cycle-consistency loss weight")
    lambda_identity: float = option(0.5, "identity loss weight, times the cycle weight (0 = off)")
    pairs: str = choices("auto", "off", default="auto",
                         help="auto: pair photos and sketches by file name and add a paired L1 "
                              "loss for those (semi-supervised); off: unpaired CycleGAN")
    lambda_pair: float = option(10.0, "paired L1 loss weight")
    lambda_pair_grad: float = option(0.0, "paired L1 loss on image gradients (finite "
                                          "differences: strokes and edges where the artist "
                                          "drew them) weight; 0 = off")
    lambda_pair_fsim: float = option(0.0, "paired FSIM loss weight: 1 - FSIM (phase congruency "
                                          "and gradient magnitude of the luma, the evaluation's "
                                          "measure, differentiable) between a translation and "
                                          "its partner; 0 = off")
    fsim_blur: float = option(0.0, "Gaussian blur (sigma, pixels at --size) of both images "
                                   "before the paired FSIM loss: strokes finer than about "
                                   "4 sigma (hair strands, whose places no loss can predict) "
                                   "leave it, contours stay; 0 = none")
    fsim_pool: int = option(1, "shift tolerance of the paired FSIM loss: the maximum of both "
                                "images' phase-congruency and gradient maps over N x N "
                                "neighbourhoods before comparing (odd; 1 = exact FSIM, which "
                                "rewards a regular lattice in hair over strands a pixel off "
                                "the artist's)")
    lambda_cross: float = option(0.0, "paired cross-hatch loss weight: a translation's "
                                      "fine-scale oriented energy in two crossing directions "
                                      "at once (the evaluation's cross-hatch measure, per "
                                      "neighbourhood) above its partner's there, against the "
                                      "lattice a paired FSIM loss draws in hair; 0 = off")
    lambda_tensor: float = option(0.0, "paired structure-tensor loss weight: local stroke "
                                       "orientation and gradient energy of a translation "
                                       "against its partner's, free of phase (strands a "
                                       "pixel or two off cost nothing, a crossing lattice "
                                       "as much as a blank); 0 = off (v8: 30)")
    lambda_fm: float = option(0.0, "discriminator feature matching on paired samples (pix2pixHD): "
                                    "L1 between the discriminator's features of a translation "
                                    "and of its partner (the artist's sketch, the photo), a "
                                    "perceptual loss without downloaded weights; 0 = off")
    ema: float = option(0.0, "decay of an exponential moving average of the generators' weights "
                             "(e.g. 0.999); validation, best/ and the saved model use the "
                             "average; 0 = off")
    lambda_spectral: float = option(0.0, "spectral loss weight: each term of a translation's "
                                         "checkerboard measure (dB at the up/downsampling "
                                         "grid's frequencies, as evaluate reports it) above "
                                         "the real images' of its domain; 0 = off (v7: 0.2; "
                                         "at 1 it blurs: see the README)")
    lambda_shift: float = option(0.0, "shift-consistency loss weight: L1 between a translation "
                                      "and the translation of its input moved by 1-3 pixels, "
                                      "moved back; what is locked to the network's pixel grid "
                                      "(dots at the up/downsampling period) differs, the face "
                                      "does not; 0 = off (one more generator pass per step; "
                                      "experimental: it did not lower the measure, see the README)")
    spectral_ring: str = choices("detached", "pinned", default="detached",
                                 help="how the spectral loss treats the frequencies around the "
                                      "grid's: detached (the measure's ring out of the gradient; "
                                      "lowering it can blur) or pinned (paired samples only: the "
                                      "ring held to the partner's level, so only less power at "
                                      "the grid's frequencies lowers it; experimental: it rang, see "
                                      "the README)")
    align: str = choices("off", "auto", default="off",
                         help="auto: crop the largest face of every image in the CUFS framing "
                              "before training (as translate/serve --align auto do), so training "
                              "and serving see the same framing; off: whole images")
    cycle_noise: float = option(0.0, "std of Gaussian noise added to a translation before it is "
                                     "reconstructed (against cycle steganography; 0 = off)")
    pool_size: int = option(50, "history pool of fakes for the discriminators (0 = none)")
    log_every: int = option(25, "steps between loss read-backs (host syncs)")
    max_steps: Optional[int] = option(None, "stop (with a checkpoint) at this global step")
    checkpoint_minutes: float = option(15.0, "also checkpoint mid-epoch this often")
    progress: bool = option(True, "progress bar", flag=False)
    fit_detector: bool = option(True, "refit the photo/sketch detector at the end", flag=False)

    def validate(self) -> None:
        check(self)
        if self.size < 32 or self.size % 4:
            raise ConfigError(f"size must be a multiple of 4 and >= 32, got {self.size}")
        for name in ("blocks", "epochs", "batch_size", "ngf", "ndf", "log_every"):
            if getattr(self, name) < (0 if name == "blocks" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.fsim_pool < 1 or self.fsim_pool % 2 == 0:
            raise ConfigError(f"fsim_pool must be an odd number >= 1, got {self.fsim_pool}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        for name in ("lambda_pair", "lambda_pair_grad", "lambda_pair_fsim", "lambda_cross", "lambda_tensor", "lambda_fm", "lambda_spectral", "lambda_shift", "cycle_noise",
                     "lambda_gan", "lambda_cycle", "lambda_identity", "fsim_blur"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {self.max_images}")


def add_train_arguments(p) -> None:
    """The options of ``facesketch train`` and ``python -m training``: every TrainConfig
    field, plus how to run (processes, progress bar)."""
    from facesketch.config import add_arguments
    add_arguments(p, TrainConfig, required=("out",))
    p.add_argument("--nproc", type=int, help="processes (torchrun/DDP); GPUs or CPU (gloo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# Options a resumed run never takes from its saved state: where it is and how it is shown.
NOT_RESUMED = ("out", "resume", "progress")


def config_from_args(a) -> TrainConfig:
    """The run's options from the command line. With ``--resume``, the options the run
    in ``--out`` was started with are the defaults: ``--out RUN --resume`` alone
    continues the same recipe, and an option given (``--epochs 10``) changes it."""
    from facesketch.config import config_from_args as build
    base: dict = {}
    if getattr(a, "resume", False) and getattr(a, "out", None):
        from pathlib import Path

        from .checkpoint import saved_config
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = saved_config(Path(a.out)) or {}
        base = {k: v for k, v in saved.items() if k in names and k not in NOT_RESUMED}
    return build(TrainConfig, a, base=base, progress=not a.no_progress)
