"""The web page: ``python -m examples.stable_diffusion.app [--model DIR] [--port 7860]``.

The code lives in :mod:`.apps.web`; this module is the command's stable name.
"""

from __future__ import annotations

from .apps.web import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
