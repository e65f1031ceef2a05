"""Checkpoints: what the trainer writes and export reads.

A run folder holds
  model.safetensors + model.json   the generators (G_A, G_B) and their config:
                                   architecture, image size, normalisation,
                                   domains, options, data summary, detector.
                                   This pair is "the checkpoint" export takes.
  state.safetensors                everything needed to resume exactly: all four
                                   networks, both optimizers, the history pools
                                   and RNG states as tensors; epoch, step, LR
                                   schedule and config as JSON in its metadata,
                                   plus a sha256 of both (state_digest).
  state.prev.safetensors           the state before that one: resume falls back
                                   to it when state.safetensors is damaged
                                   (truncated copy, full disk, flipped bytes).
  best/model.*                     the generators with the best validation score.

Every file is written to a temporary name (``.NAME.tmpPID``), fsynced and renamed
into place, so a kill -9 at any moment leaves the previous good file intact; a
temporary file such a kill leaves behind is removed when the next run starts
(remove_stale_temps). The JSON config also travels inside the safetensors
metadata and carries the weights' sha256, so a mismatched pair is detected.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from facesketch.files import sha256_file  # noqa: F401 (also this module's API)

try:
    from safetensors import SafetensorError
except ImportError:  # safetensors before 0.4 exposed it only in its compiled module
    from safetensors.safetensors_rust import SafetensorError

from .networks import (ARCHS, ResnetGenerator, build_generator, clean_reference_state_dict,
                       generator_from_arch, infer_blocks, infer_ngf)

CHECKPOINT_FORMAT = "facesketch-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "model.json", "state.safetensors"
PREV_STATE_FILE = "state.prev.safetensors"
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "range": [-1.0, 1.0]}
STATE_META, STATE_DIGEST = "facesketch_state", "facesketch_state_sha256"
# The meta keys Run.resume cannot do without: a state lacking one is damaged.
STATE_KEYS = ("config", "epoch", "global_step", "opt_G", "opt_D", "scaler_G", "scaler_D",
              "pool_counts", "python_random", "numpy_random")
# What reading a damaged or foreign safetensors file raises: SafetensorError for a
# truncated file or a bad header, OSError for an unreadable one, ValueError (and
# json.JSONDecodeError, a ValueError) for bad JSON, KeyError/TypeError for metadata
# of the wrong shape.
READ_ERRORS = (SafetensorError, OSError, ValueError, KeyError, TypeError)
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")   # atomic_* temporary names: .NAME.tmpPID

log = logging.getLogger("facesketch.checkpoint")


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
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is still atomic


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_tmp(tensors: dict[str, torch.Tensor], path: Path,
               metadata: dict[str, str] | None) -> Path:
    """Write ``path``'s temporary file; on any failure (a full disk) remove it, re-raise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path,
                        metadata: dict[str, str] | None = None) -> None:
    tmp = _write_tmp(tensors, path, metadata)
    try:
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # exists, owned by someone else
    return True


def remove_stale_temps(*folders: Path) -> list[Path]:
    """Remove the temporary files (``.NAME.tmpPID``) that a kill -9 during an atomic
    write leaves behind (a state's is ~180 MB) in ``folders``; returns what was removed.

    Only files of our own pattern are touched, and only those of a process that is
    no longer running, or of this process (which is not writing while a run starts:
    after a container restart the new trainer often gets the killed one's pid). A
    file whose pid is alive is left alone with a warning: it may be a second trainer
    wrongly writing to the same folder, and deleting its file mid-write would turn
    its rename into a crash. Called only when a run starts, before it writes.
    """
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for f in sorted(Path(folder).iterdir()):
            m = _TEMP.match(f.name)
            if not m or not f.is_file():
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                log.warning("left %s in place: process %d, which may be writing it, is running",
                            f, pid)
                continue
            size = f.stat().st_size
            f.unlink()
            log.warning("removed %s (%.1f MB), a temporary file left by an interrupted write "
                        "(process %d)", f, size / 1e6, pid)
            removed.append(f)
    return removed


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: independent of file layout."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():  # reshape: a 0-d tensor (Adam's step) cannot be viewed as bytes
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol, no copy
    return h.hexdigest()


def model_config(blocks: int, ngf: int, size: int, arch: str = "reference",
                 **extra: Any) -> dict[str, Any]:
    """``arch``: a training.networks.ARCHS name; stored as ``arch.upsample``."""
    if arch not in ARCHS:
        raise CheckpointError(f"unknown generator arch {arch!r}; valid: {', '.join(ARCHS)}")
    cfg = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": {"generator": "resnet", "blocks": blocks, "ngf": ngf, "norm": "instance",
                 "upsample": ARCHS[arch], "input_nc": 3, "output_nc": 3},
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
    tensors = read_tensors(st)
    atomic_save_tensors(tensors, st, metadata={"facesketch": json.dumps(cfg)})
    atomic_write_text(json.dumps(cfg, indent=2) + "\n", st.with_suffix(".json"))


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    """A CheckpointError naming ``path`` and what is wrong with it."""
    if isinstance(exc, SafetensorError):
        why = f"truncated or corrupt (safetensors: {exc})"
    elif isinstance(exc, OSError):
        why = f"unreadable ({exc.strerror or exc})"
    elif isinstance(exc, json.JSONDecodeError):
        why = f"corrupt: its JSON does not parse ({exc})"
    else:
        why = f"corrupt ({type(exc).__name__}: {exc})"
    return CheckpointError(f"{path} is {why}")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors' load_file, with a truncated or corrupt file a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except READ_ERRORS as exc:
        raise _damaged(path, exc) from exc


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of ``path`` ({} if none); damage -> CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except READ_ERRORS as exc:
        raise _damaged(path, exc) from exc


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
        src = js
        try:
            cfg = json.loads(js.read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
            raise _damaged(js, exc) from exc
    else:
        src = st
        meta = read_metadata(st)
        if "facesketch" not in meta:
            raise CheckpointError(f"{st} has no facesketch config (no {js.name}, no metadata)")
        try:
            cfg = json.loads(meta["facesketch"])
        except ValueError as exc:
            raise _damaged(st, exc) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{src} is not a facesketch checkpoint config")
    if int(cfg.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{js} is checkpoint version {cfg['version']}; this facesketch "
                              f"reads up to {CHECKPOINT_VERSION}")
    return cfg


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[dict[str, ResnetGenerator], dict]:
    """Load both generators of a checkpoint. Returns ({'G_A': G, 'G_B': F}, config)."""
    st = resolve(path)
    cfg = read_config(st)
    tensors = read_tensors(st)
    want = cfg.get("weights_sha256")
    if want and tensors_digest(tensors) != want:
        raise CheckpointError(f"{st}: weights do not match the sha256 in its config "
                              "(file replaced or corrupted)")
    arch = cfg["arch"]
    nets = {}
    for name in ("G_A", "G_B"):
        sd = {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            net = generator_from_arch(arch)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{st}: unusable arch {arch}: {exc}") from exc
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


def previous_state(path: Path) -> Path:
    """state.safetensors -> state.prev.safetensors, the copy save_state keeps."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


# os.link's answers on a filesystem without hard links (FAT, some FUSE and network mounts)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}


def _keep_as(cur: Path, prev: Path) -> None:
    """Make ``prev`` the file ``cur`` is, without a moment where neither is complete."""
    link = _tmp_name(prev)
    link.unlink(missing_ok=True)
    try:
        os.link(cur, link)      # no copy: prev shares cur's blocks until cur is replaced
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here: move cur aside instead. Until the caller renames the new
        # state into place only prev exists; load_resume_state then falls back to it.
        log.debug("%s: no hard links on this filesystem (%s); renaming to %s", cur, exc, prev.name)
        os.replace(cur, prev)
    else:
        os.replace(link, prev)
    _fsync_dir(prev.parent)


def state_digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over a state's tensors (tensors_digest) and its JSON metadata: a flipped
    byte anywhere but in the safetensors header's offsets changes it (those break the
    file outright). About 0.3 s per 180 MB on one core."""
    h = hashlib.sha256(tensors_digest(tensors).encode())
    h.update(meta_json.encode())
    return h.hexdigest()


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               keep_previous: bool = True) -> None:
    """Write the resume state atomically, with its state_digest in its metadata.

    ``keep_previous``: the state being replaced is first kept as state.prev.safetensors
    (load_resume_state's fallback), so at every instant at least one complete state
    exists. Pass False when the current state is known to be damaged: it must not
    replace the good previous one.
    """
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_json = json.dumps(meta)
    metadata = {STATE_META: meta_json, STATE_DIGEST: state_digest(cpu, meta_json)}
    tmp = _write_tmp(cpu, path, metadata)
    try:
        if keep_previous and path.is_file():
            _keep_as(path, previous_state(path))
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read one resume state. CheckpointError naming the file when it is missing,
    truncated, corrupt (its state_digest, where it carries one: catches a same-length
    corruption), or its metadata is missing, unparsable or incomplete."""
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    raw = read_metadata(path)
    if STATE_META not in raw:
        raise CheckpointError(f"{path} is damaged or not a facesketch training state "
                              f"(no {STATE_META} metadata)")
    try:
        meta = json.loads(raw[STATE_META])
    except ValueError as exc:
        raise _damaged(path, exc) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is damaged: its {STATE_META} metadata is not a JSON object")
    missing = [k for k in STATE_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is damaged: its metadata lacks {', '.join(missing)}")
    tensors = read_tensors(path)
    want = raw.get(STATE_DIGEST)
    if want is not None and state_digest(tensors, raw[STATE_META]) != want:
        raise CheckpointError(f"{path} is corrupt: its tensors and metadata do not match the "
                              "sha256 stored in it")
    return tensors, meta


def load_resume_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The state to resume from: ``path`` (state.safetensors) if it is intact, else
    state.prev.safetensors, with a warning naming the damaged file and why.

    Returns (tensors, meta, the file used). CheckpointError if neither exists, or if
    neither is usable (naming both, and how to start over).
    """
    prev = previous_state(path)
    if not path.is_file() and not prev.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    problems: list[str] = []
    for cand in (path, prev):
        if not cand.is_file():
            problems.append(f"{cand} does not exist")
            continue
        try:
            tensors, meta = load_state(cand)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.warning("%s; resuming from the previous state %s (global step %s) instead",
                        problems[0], cand, meta.get("global_step"))
        return tensors, meta, cand
    folder = path.parent
    raise CheckpointError(
        f"cannot resume the run in {folder}: {problems[0]}; and {problems[1]}. "
        f"To start over, train with another --out, or delete {folder} and run again "
        "without --resume")


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The options a run in ``folder`` was started with (its resume state's metadata,
    read without its tensors; state.prev.safetensors if the newest is unreadable), or
    None when the folder holds no readable state."""
    path = folder / STATE_FILE
    for cand in (path, previous_state(path)):
        if not cand.is_file():
            continue
        try:
            meta = json.loads(read_metadata(cand).get(STATE_META, "null"))
        except (CheckpointError, ValueError) as exc:
            log.debug("%s: no options to read (%s)", cand, exc)
            continue
        if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            return meta["config"]
    return None


def trim_log(path: Path, global_step: int) -> int:
    """Keep only the rows of ``path`` (log.jsonl) up to ``global_step``, the step a run
    resumes from: rows logged after the last checkpoint, before a kill -9, would
    otherwise appear twice when the resumed run repeats those steps. A line that does
    not parse (a write cut short by the kill) is dropped too. Rewritten atomically,
    and only if something is dropped; returns the number of lines dropped."""
    if not path.is_file():
        return 0
    keep, later, bad = [], 0, []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(i)
            continue
        step = row.get("global_step") if isinstance(row, dict) else None
        if isinstance(step, int) and step > global_step:
            later += 1
            continue
        keep.append(line)
    if not later and not bad:
        return 0
    atomic_write_text("".join(line + "\n" for line in keep), path)
    if later:
        log.info("%s: dropped %d row(s) logged after global step %d, which the resumed run "
                 "repeats", path, later, global_step)
    if bad:
        log.warning("%s: dropped %d unreadable line(s) (line %s), a write cut short", path,
                    len(bad), ", ".join(map(str, bad[:10])))
    return later + len(bad)
