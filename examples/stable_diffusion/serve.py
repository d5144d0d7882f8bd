"""The HTTP server on Ray Serve: ``python -m examples.stable_diffusion.serve [--replicas N] [--model DIR]``.

The code lives in :mod:`.apps.serve`; this module is the command's stable name.
"""

from __future__ import annotations

from .apps.serve import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
