"""Export a checkpoint into a bundle of verified inference engines (needs torch).

    from export import export_bundle
    export_bundle("runs/cufs128", "bundles/default", formats="all")
"""

from .bundle import export_bundle, parity, resolve_checkpoint, run_format
from .context import ExportContext, ExportError, FormatSkipped, ParityError
from .exporters import exporter

__all__ = ["export_bundle", "run_format", "parity", "resolve_checkpoint", "ExportContext",
           "ExportError", "FormatSkipped", "ParityError", "exporter"]
