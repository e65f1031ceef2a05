"""Reading a bundle: manifest.json plus the engine files it lists, each verified.

A bundle is a folder written by ``facesketch export``. The runtime learns
everything from ``manifest.json`` (and the metadata inside each engine file),
never from file names. Every file is checked against the sha256 the manifest
records before it is loaded; a mismatch is refused with a clear error.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

from facesketch.files import sha256_file  # noqa: F401 (also this module's API)
from facesketch.formats import DIRECTIONS, FORMATS

BUNDLE_FORMAT = "facesketch-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
# Keys the runtime writes into / reads from ONNX metadata_props, OpenVINO rt_info
# and safetensors metadata (prefixed "facesketch." in ONNX, nested in OpenVINO).
META_KEYS = ("direction", "domain_in", "domain_out", "image_size", "normalization", "format",
             "precision", "source_sha256", "version")


class BundleError(ValueError):
    """A bundle is missing, malformed, or one of its files does not match its manifest."""


class ManifestError(BundleError):
    """manifest.json breaks the schema; ``problems`` lists every problem, one line each."""

    def __init__(self, manifest: Path, problems: list[str]):
        self.problems = list(problems)
        n = len(problems)
        super().__init__(f"{manifest} is not a valid bundle manifest ({n} problem{'s' * (n != 1)}; "
                         "re-export the bundle with `facesketch export`):\n"
                         + "\n".join(f"  - {p}" for p in problems))


# Bounds on what the runtime allocates from manifest values (image_size**2 * max_batch
# floats per engine call): far outside anything `facesketch export` writes.
IMAGE_SIZE_RANGE = (16, 4096)
MAX_BATCH_RANGE = (1, 1024)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def manifest_problems(m: dict[str, Any]) -> list[str]:
    """Every schema problem of a parsed manifest.json, one message each (empty: valid).

    Checks the type (and, for sizes, the range) of every field the runtime reads;
    fields it does not read (created, calibration, ...) are not checked.
    """
    return _Schema().manifest(m)


class _Schema:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, field: str, want: str, v: Any) -> None:
        self.problems.append(f"{field}: must be {want}, got {_show(v)} ({_kind(v)})")

    def missing(self, field: str, what: str) -> None:
        self.problems.append(f"{field}: missing (a required key of {what})")

    def int_in(self, field: str, v: Any, bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        if not _is_int(v) or not lo <= v <= hi:
            self.bad(field, f"an integer in {lo}..{hi}", v)

    def obj(self, field: str, v: Any, null_ok: bool = False) -> bool:
        if isinstance(v, dict) or (null_ok and v is None):
            return True
        self.bad(field, "an object" + (" or null" if null_ok else ""), v)
        return False

    def manifest(self, m: dict[str, Any]) -> list[str]:
        if "version" in m and not _is_int(m["version"]):
            self.bad("version", "an integer", m["version"])
        for key in ("image_size", "normalization", "directions", "files"):
            if key not in m:
                self.missing(key, "the manifest")
        if "image_size" in m:
            self.int_in("image_size", m["image_size"], IMAGE_SIZE_RANGE)
        if "normalization" in m:
            self.normalization(m["normalization"])
        if "directions" in m:
            dirs = m["directions"]
            if (not isinstance(dirs, (list, dict)) or not dirs
                    or any(d not in DIRECTIONS for d in dirs)):
                self.bad("directions", "a non-empty list of directions out of "
                         + ", ".join(DIRECTIONS), dirs)
        if "files" in m:
            files = m["files"]
            if not isinstance(files, list) or not files:
                self.bad("files", "a non-empty list of engine file entries", files)
            else:
                for i, e in enumerate(files):
                    self.entry(f"files[{i}]", e)
        build = m.get("build", {})
        if self.obj("build", build) and "max_batch" in build:
            self.int_in("build.max_batch", build["max_batch"], MAX_BATCH_RANGE)
        if "detector" in m:
            self.obj("detector", m["detector"], null_ok=True)
        pp = m.get("postprocess")
        if pp is not None and (not isinstance(pp, dict) or any(
                d not in DIRECTIONS or v != "gray" for d, v in pp.items())):
            self.bad("postprocess", 'a mapping of directions to "gray"', pp)
        for key in ("skipped", "refused"):
            if key in m:
                self.obj(key, m[key])
        source = m.get("source", {})
        if self.obj("source", source) and "arch" in source:
            self.obj("source.arch", source["arch"], null_ok=True)
        return self.problems

    def normalization(self, norm: Any) -> None:
        if not isinstance(norm, dict):
            self.bad("normalization", 'an object like {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}',
                     norm)
            return
        for key in ("mean", "std"):
            v = norm.get(key, [0.5] * 3)
            if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)):
                self.bad(f"normalization.{key}", "a list of 3 finite numbers (R, G, B)", v)
            elif key == "std" and not all(x > 0 for x in v):
                self.bad("normalization.std", "3 numbers > 0", v)

    def entry(self, where: str, e: Any) -> None:
        if not self.obj(where, e):
            return
        for key in ("format", "direction", "path", "sha256"):
            if key not in e:
                self.missing(f"{where}.{key}", "a file entry")
        if "format" in e and not (isinstance(e["format"], str) and e["format"]):
            self.bad(f"{where}.format", "a format name", e["format"])
        if "direction" in e and e["direction"] not in DIRECTIONS:
            self.bad(f"{where}.direction", " or ".join(DIRECTIONS), e["direction"])
        if "image_size" in e:
            self.int_in(f"{where}.image_size", e["image_size"], IMAGE_SIZE_RANGE)
        if "max_batch" in e:
            self.int_in(f"{where}.max_batch", e["max_batch"], MAX_BATCH_RANGE)
        for key in ("parity", "info"):
            if key in e:
                self.obj(f"{where}.{key}", e[key])
        if "inputs" in e and not (isinstance(e["inputs"], list)
                                  and all(isinstance(x, dict) for x in e["inputs"])):
            self.bad(f"{where}.inputs", "a list of objects", e["inputs"])
        self.file(where, e)
        comps = e.get("companions", [])
        if not isinstance(comps, list):
            self.bad(f"{where}.companions", "a list", comps)
            return
        for j, c in enumerate(comps):
            cw = f"{where}.companions[{j}]"
            if not self.obj(cw, c):
                continue
            for key in ("path", "sha256"):
                if key not in c:
                    self.missing(f"{cw}.{key}", "a companion file")
            if "role" in c and not (isinstance(c["role"], str) and c["role"]):
                self.bad(f"{cw}.role", "a non-empty string", c["role"])
            self.file(cw, c)

    def file(self, where: str, e: dict[str, Any]) -> None:
        if "path" in e and not (isinstance(e["path"], str) and e["path"]):
            self.bad(f"{where}.path", "a relative path inside the bundle", e["path"])
        if "sha256" in e and not (isinstance(e["sha256"], str) and _SHA256.fullmatch(e["sha256"])):
            self.bad(f"{where}.sha256", "64 lowercase hex digits", e["sha256"])


def is_bundle(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / MANIFEST).is_file() or (p.name == MANIFEST and p.is_file())


class Bundle:
    """A loaded manifest. Files are verified (sha256) on first use, once."""

    def __init__(self, root: Path, manifest: dict[str, Any], digest: str):
        self.root = root
        self.manifest = manifest
        self.hash = digest
        self._verified: dict[str, Path] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bundle":
        p = Path(path)
        root = p.parent if p.name == MANIFEST and p.is_file() else p
        mf = root / MANIFEST
        if not mf.is_file():
            raise BundleError(f"{root} is not a bundle (no {MANIFEST}); make one with "
                              "`facesketch export CHECKPOINT --out BUNDLE`")
        raw = mf.read_bytes()
        try:
            manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mf} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{mf} is not a facesketch bundle manifest")
        version = manifest.get("version", 0)
        if _is_int(version) and version > BUNDLE_VERSION:
            raise BundleError(f"{mf} is bundle version {version}; this facesketch "
                              f"reads up to {BUNDLE_VERSION}; upgrade facesketch")
        problems = manifest_problems(manifest)
        if problems:
            raise ManifestError(mf, problems)
        return cls(root.resolve(), manifest, hashlib.sha256(raw).hexdigest())

    # ---------------------------------------------------------------- queries
    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def normalization(self) -> dict[str, Any]:
        return self.manifest["normalization"]

    @property
    def directions(self) -> list[str]:
        return [d for d in DIRECTIONS if d in self.manifest["directions"]]

    @property
    def detector(self) -> dict[str, Any] | None:
        return self.manifest.get("detector")

    @property
    def postprocess(self) -> dict[str, str]:
        """direction -> "gray" for a direction whose outputs are made grayscale."""
        pp = self.manifest.get("postprocess") or {}
        return pp if isinstance(pp, dict) else {}

    @property
    def max_batch(self) -> int:
        return int(self.manifest.get("build", {}).get("max_batch", 32))

    @property
    def formats(self) -> list[str]:
        present = {e["format"] for e in self.manifest["files"]}
        return [f for f in FORMATS if f in present]

    @property
    def skipped(self) -> dict[str, str]:
        return dict(self.manifest.get("skipped", {}))

    def entry(self, fmt: str, direction: str) -> dict[str, Any]:
        for e in self.manifest["files"]:
            if e["format"] == fmt and e["direction"] == direction:
                return e
        raise BundleError(f"bundle {self.root} has no {fmt} file for {direction} "
                          f"(formats present: {', '.join(self.formats) or 'none'})")

    def arch(self) -> dict[str, Any]:
        return self.manifest.get("source", {}).get("arch", {})

    # ---------------------------------------------------------------- files
    def _inside(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        if os.path.isabs(rel) or (self.root not in p.parents and p != self.root):
            raise BundleError(f"manifest path {rel!r} points outside the bundle {self.root}")
        return p

    def verify_file(self, rel: str, sha256: str) -> Path:
        """Path of ``rel`` inside the bundle after checking its sha256 (once)."""
        with self._lock:
            if rel in self._verified:
                return self._verified[rel]
            p = self._inside(rel)
            if not p.is_file():
                raise BundleError(f"bundle file {p} is missing (listed in {MANIFEST})")
            got = sha256_file(p)
            if got != sha256:
                raise BundleError(f"bundle file {p} failed its integrity check: sha256 {got[:16]}... "
                                  f"does not match {sha256[:16]}... in {MANIFEST} (the file was "
                                  "modified or corrupted); refusing to load it -- re-export the bundle")
            self._verified[rel] = p
            return p

    def files_for(self, entry: dict[str, Any]) -> dict[str, Path]:
        """Verified paths of an entry: {'model': main file, ROLE: companion, ...}."""
        out = {"model": self.verify_file(entry["path"], entry["sha256"])}
        for c in entry.get("companions", []):
            out[c.get("role", c["path"])] = self.verify_file(c["path"], c["sha256"])
        return out
