"""Text generation with a growing KV cache on ONNX Runtime: decoder folders and the tools that build them.

``folder`` reads a decoder's ONNX folder (an optimum ``text-generation-with-past`` export, an
onnxruntime-genai model-builder export, or a plain ``torch.onnx`` export of a transformers model)
into one description of its inputs, outputs, cache and tokens. ``build`` makes tiny decoders
offline and exports them in each of those layouts.
"""
