"""TrainConfig: every option of a training run, typed and checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from facesketch.config import ConfigError, check, choices


@dataclass
class TrainConfig:
    out: str = "runs/default"
    data: Optional[str] = None            # a folder in a known layout ...
    photos: Optional[str] = None          # ... or two folders
    sketches: Optional[str] = None
    size: int = 128
    blocks: int = 3
    # generator upsampling: "resize" (resize + conv, no checkerboard) or "reference"
    # (the reference code's ConvTranspose; import-reference and old checkpoints)
    arch: str = choices("resize", "reference", default="resize")
    ngf: int = 64
    ndf: int = 64
    epochs: int = 200                     # constant LR for the first half, then linear decay
    batch_size: int = 1
    max_images: Optional[int] = None      # per domain
    holdout: int = 8                      # images per domain held back for samples/validation
    device: str = choices("auto", "cpu", "cuda", default="auto")
    precision: str = choices("auto", "fp32", "bf16", "fp16", default="auto")
    compile: bool = False
    # torch.compile mode; "reduce-overhead" captures CUDA graphs (batch-1 GPU steps are
    # launch-bound), "max-autotune" also autotunes kernels.
    compile_mode: str = choices("default", "reduce-overhead", "max-autotune", default="default")
    channels_last: Optional[bool] = None  # None: on for CUDA, off for CPU
    seed: int = 0
    resume: bool = False
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5          # times lambda_cycle
    # Semi-supervised mode: "auto" pairs photos and sketches by file name and adds a
    # paired L1 loss (lambda_pair) for the paired part; "off" trains unpaired.
    pairs: str = choices("auto", "off", default="auto")
    lambda_pair: float = 10.0
    # std of Gaussian noise added to a translation before it is reconstructed
    # (against the cycle "steganography" of Chu et al. 2017; 0 = off)
    cycle_noise: float = 0.0
    pool_size: int = 50
    log_every: int = 25                   # steps between loss read-backs (host syncs)
    max_steps: Optional[int] = None       # stop (with a checkpoint) at this global step
    checkpoint_minutes: float = 15.0      # also checkpoint mid-epoch this often
    progress: bool = True
    fit_detector: bool = True

    def validate(self) -> None:
        check(self)
        if self.size < 32 or self.size % 4:
            raise ConfigError(f"size must be a multiple of 4 and >= 32, got {self.size}")
        for name in ("blocks", "epochs", "batch_size", "ngf", "ndf", "log_every"):
            if getattr(self, name) < (0 if name == "blocks" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lambda_pair", "cycle_noise", "lambda_cycle", "lambda_identity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {self.max_images}")
