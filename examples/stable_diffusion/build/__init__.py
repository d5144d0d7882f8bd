"""Building models for the pipelines: export from diffusers' torch folders, tiny models, their cache, the optimizer.

Nothing here imports diffusers or onnxruntime on import; each module says what it needs.
"""
