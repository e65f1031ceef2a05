"""Checkpoints: what the trainer writes and export reads.

A run folder holds
  model.safetensors + model.json   the generators (G_A, G_B) and their config:
                                   architecture, image size, normalisation,
                                   domains, options, data summary, detector.
                                   This pair is "the checkpoint" export takes.
  state.safetensors                everything needed to resume exactly: all four
                                   networks, both optimizers, the history pools
                                   and RNG states as tensors; epoch, step, LR
                                   schedule and config as JSON in its metadata.
  best/model.*                     the generators with the best validation score.

Every file is written to a temporary name, fsynced and renamed into place, so a
kill -9 at any moment leaves the previous good file intact. The JSON config
also travels inside the safetensors metadata and carries the weights' sha256,
so a mismatched pair is detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .networks import ResnetGenerator, build_generator, clean_reference_state_dict, infer_blocks, infer_ngf

CHECKPOINT_FORMAT = "facesketch-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "model.json", "state.safetensors"
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "range": [-1.0, 1.0]}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or inconsistent."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_replace(tmp: Path, dst: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())          # safetensors writes 0600; give a normal file's mode
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    try:
        dfd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path,
                        metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    _fsync_replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
    _fsync_replace(tmp, path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: independent of file layout."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_config(blocks: int, ngf: int, size: int, **extra: Any) -> dict[str, Any]:
    cfg = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": {"generator": "resnet", "blocks": blocks, "ngf": ngf, "norm": "instance",
                 "input_nc": 3, "output_nc": 3},
        "image_size": size,
        "normalization": NORMALIZATION,
        "domains": {"A": "photo", "B": "sketch"},
        # Paper names: G (photo->sketch) is our G_A, F (sketch->photo) our G_B.
        "generators": {"photo2sketch": "G_A", "sketch2photo": "G_B"},
    }
    cfg.update(extra)
    return cfg


def save_model(out: str | Path, G_A: torch.nn.Module, G_B: torch.nn.Module, config: dict[str, Any],
               dtype: torch.dtype = torch.float32) -> Path:
    """Write model.safetensors + model.json into folder ``out``; returns the folder."""
    out = Path(out)
    tensors = {f"G_A.{k}": v.to(dtype) for k, v in G_A.state_dict().items()}
    tensors.update({f"G_B.{k}": v.to(dtype) for k, v in G_B.state_dict().items()})
    config = dict(config, dtype=str(dtype).replace("torch.", ""),
                  weights_sha256=tensors_digest(tensors))
    text = json.dumps(config, indent=2, sort_keys=False)
    atomic_save_tensors(tensors, out / MODEL_FILE, metadata={"facesketch": json.dumps(config)})
    atomic_write_text(text + "\n", out / CONFIG_FILE)
    return out


def add_detector(folder: str | Path, detector: dict[str, Any] | None) -> None:
    """Store fitted detector parameters in an existing checkpoint's config."""
    st = resolve(folder)
    cfg = read_config(st)
    cfg["detector"] = detector
    tensors = load_file(str(st))
    atomic_save_tensors(tensors, st, metadata={"facesketch": json.dumps(cfg)})
    atomic_write_text(json.dumps(cfg, indent=2) + "\n", st.with_suffix(".json"))


def resolve(path: str | Path) -> Path:
    """A run folder, a model.safetensors or a model.json -> the safetensors file."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    elif p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run folder with "
                              f"{MODEL_FILE} + {CONFIG_FILE}, or a {MODEL_FILE} file)")
    return p


def read_config(path: str | Path) -> dict[str, Any]:
    st = resolve(path)
    js = st.with_suffix(".json")
    if js.is_file():
        cfg = json.loads(js.read_text())
    else:
        with safe_open(str(st), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "facesketch" not in meta:
            raise CheckpointError(f"{st} has no facesketch config (no {js.name}, no metadata)")
        cfg = json.loads(meta["facesketch"])
    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{js} is not a facesketch checkpoint config")
    if int(cfg.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{js} is checkpoint version {cfg['version']}; this facesketch "
                              f"reads up to {CHECKPOINT_VERSION}")
    return cfg


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[dict[str, ResnetGenerator], dict]:
    """Load both generators of a checkpoint. Returns ({'G_A': G, 'G_B': F}, config)."""
    st = resolve(path)
    cfg = read_config(st)
    tensors = load_file(str(st))
    want = cfg.get("weights_sha256")
    if want and tensors_digest(tensors) != want:
        raise CheckpointError(f"{st}: weights do not match the sha256 in its config "
                              "(file replaced or corrupted)")
    arch = cfg["arch"]
    nets = {}
    for name in ("G_A", "G_B"):
        sd = {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
        net = build_generator(arch["blocks"], arch["ngf"])
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{st}: {name} does not match its config: {exc}") from exc
        nets[name] = net.to(device=device, dtype=dtype).eval()
    return nets, cfg


def import_reference(g_a: str | Path, g_b: str | Path, out: str | Path, size: int = 256) -> Path:
    """Convert reference-implementation generator .pth files into a facesketch checkpoint."""
    nets = {}
    for name, path in (("G_A", g_a), ("G_B", g_b)):
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad pickles
            raise CheckpointError(f"cannot read {path} as a PyTorch state_dict: {exc}") from exc
        if not isinstance(sd, dict) or "model.1.weight" not in {k.removeprefix("module.") for k in sd}:
            raise CheckpointError(f"{path} is not a reference ResnetGenerator state_dict "
                                  "(no model.1.weight)")
        sd = clean_reference_state_dict(sd)
        net = build_generator(infer_blocks(sd), infer_ngf(sd))
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: not a ResnetGenerator the reference builds: {exc}") from exc
        nets[name] = net
    blocks, ngf = infer_blocks(nets["G_A"].state_dict()), infer_ngf(nets["G_A"].state_dict())
    cfg = model_config(blocks, ngf, size, source={"imported_from": [str(g_a), str(g_b)]})
    return save_model(out, nets["G_A"], nets["G_B"], cfg)


# ----------------------------------------------------------------- resume state
def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}.state.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    head = prefix + ".state."
    for k, v in tensors.items():
        if k.startswith(head):
            idx, key = k[len(head):].split(".", 1)
            state.setdefault(int(idx), {})[key] = v
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    atomic_save_tensors(tensors, path, metadata={"facesketch_state": json.dumps(meta)})


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["facesketch_state"])
        return load_file(str(path)), meta
    except (KeyError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable facesketch training state: {exc}") from exc
