"""Stable Diffusion with ortbind: ONNX export and a tiny offline test model."""
