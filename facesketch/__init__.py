"""facesketch: face photo <-> sketch translation with CycleGAN.

This package holds what every stage shares and that needs no torch: typed
configuration, image decoding, the export-format table, the machine description
written into benchmark results, and the command line.
"""

__version__ = "0.1.0"
