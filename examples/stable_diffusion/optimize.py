"""ONNX Runtime's transformer optimizer over an exported Stable Diffusion folder.

    python -m examples.stable_diffusion.optimize SRC DST [--target cuda|cpu] [--fp16]

The code lives in :mod:`.build.optimize`; this module is the command's stable name.
"""

from __future__ import annotations

from .build.cli import optimize_main as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
