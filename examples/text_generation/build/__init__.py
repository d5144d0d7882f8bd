"""Build tools for the text-generation example: tiny decoders and their ONNX exports in three layouts."""
