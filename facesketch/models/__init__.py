"""The embedded default model: fp16 generators + detector parameters + model card."""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "default"


def default_model() -> Path:
    """The packaged checkpoint folder; a clear error where it is missing."""
    if not (DEFAULT_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing at {DEFAULT_MODEL}; train one "
            "(facesketch train ...) and package it (python -m app.package RUN)")
    return DEFAULT_MODEL
