"""Model files: the catalogue of what `tadbot models pull` fetches, pulling and checking it, quantising a
GGUF, and converting a Keras emotion classifier to ONNX.

May import: `config`, `datafiles`, `errors`.
"""
