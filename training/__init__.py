"""Offline training tooling, run with `tadbot train ...` (`python -m training`); the runtime never imports
this package.

- `training.fer`: fine-tunes a torchvision backbone on a labelled face-expression set and exports ONNX with
  the manifest the server reads (`tadbot train fer`).
- `training.llm`: prepares conversation data for the companion's LLM fine-tune: cleaned, split by question,
  as chat JSONL with a data card (`tadbot train prepare`), and generates synthetic talk-down dialogs from
  an OpenAI-compatible endpoint (`tadbot train generate`).
"""
