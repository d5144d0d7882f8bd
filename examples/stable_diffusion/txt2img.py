"""The ``txt2img`` command: ``python -m examples.stable_diffusion.txt2img --help`` lists its options.

Without ``--model`` it runs the built-in digits model (``models/digits``, exported to ONNX on first
use; it draws the digit the prompt names); ``--model DIR`` runs an ONNX folder in diffusers' or
optimum's layout. The code
lives in :mod:`.apps.cli`; this module is the command's stable name (and ``ortbind-txt2img``'s).
"""

from __future__ import annotations

from .apps.cli import txt2img as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
