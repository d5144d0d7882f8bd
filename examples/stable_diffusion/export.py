"""Export a diffusers Stable Diffusion torch folder to ONNX, or build a tiny model.

    python -m examples.stable_diffusion.export SRC DST [--fp16] [--opset N] [--optimize [cuda|cpu]]
    python -m examples.stable_diffusion.export --tiny DST [--kind sd|inpaint|sdxl]

The code lives in :mod:`.build`; this module is the command's stable name.
"""

from __future__ import annotations

from .build.cli import export_main as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
