"""Mixed precision, in the manner of nanoGPT: one autocast/nullcontext switch; bf16 where
the GPU has it, fp16 (with a GradScaler, in the trainer) where it has not, fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from .config import TrainConfig


def pick_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        if device.type == "cpu" and cfg.precision == "fp16":
            raise RuntimeError("fp16 training needs a GPU; use fp32 or bf16 on CPU")
        return cfg.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_ctx(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
