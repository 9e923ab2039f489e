"""Offline training tooling (data preparation, LoRA SFT, GGUF export). Not built yet: the runtime never
imports this package, and `tadbot train` does not exist until it is."""
