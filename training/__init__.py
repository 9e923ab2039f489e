"""Offline training tooling, run with `tadbot train ...`; the runtime never imports this package.

- `training.fer`: fine-tunes a torchvision backbone on a labelled face-expression set and exports ONNX with
  the manifest the server reads (`tadbot train fer`).
"""
