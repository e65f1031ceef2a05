"""facesketch runtime: run exported bundles fast, without torch.

    from runtime import Translator, detect_domain

Names are resolved lazily (PEP 562), so ``import runtime`` is cheap and never
imports torch or an inference engine; each backend imports its engine when it
loads. ``detect_domain``/``DEFAULT_PARAMS`` live in the core (facesketch.domain);
fitting them is training's (training.detector).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Translator": "runtime.translator",
    "Translation": "runtime.translator",
    "Bundle": "runtime.bundle",
    "BundleError": "runtime.bundle",
    "BACKENDS": "runtime.backends",
    "BackendUnavailable": "runtime.backends",
    "detect_domain": "facesketch.domain",
    "DEFAULT_PARAMS": "facesketch.domain",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
