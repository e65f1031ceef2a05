"""Running a command: expected failures become one clear line, not a traceback."""

from __future__ import annotations

import argparse
import sys


def run_handler(func, a: argparse.Namespace, label: str) -> int:
    """Run a subcommand: expected failures become one clear line and exit status 2
    (-v shows the traceback); Ctrl-C exits 130."""
    try:
        return int(func(a) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        if getattr(a, "verbose", False):
            raise
        print(f"{label}: error: {exc}", file=sys.stderr)
        return 2
