"""`tadbot train fer`: fine-tune a small ImageNet backbone on labelled faces, export ONNX and its manifest.

The export is fed by the server exactly as it was fed in training (one shared preprocessing step), so a model
trained here drops into `fer.model_path` without code. Runs in its own process (`python -m training.fer`):
the server never imports this package or torch.
"""
