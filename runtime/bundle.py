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
import os
import threading
from pathlib import Path
from typing import Any

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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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
        except json.JSONDecodeError as exc:
            raise BundleError(f"{mf} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{mf} is not a facesketch bundle manifest")
        if int(manifest.get("version", 0)) > BUNDLE_VERSION:
            raise BundleError(f"{mf} is bundle version {manifest['version']}; this facesketch "
                              f"reads up to {BUNDLE_VERSION}; upgrade facesketch")
        for key in ("image_size", "normalization", "directions", "files"):
            if key not in manifest:
                raise BundleError(f"{mf} lacks the key {key!r}")
        for e in manifest["files"]:
            for key in ("format", "direction", "path", "sha256"):
                if key not in e:
                    raise BundleError(f"{mf}: a file entry lacks {key!r}: {e}")
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
