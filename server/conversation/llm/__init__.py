"""The language model the conversation speaks through: the chat backends (llama.cpp on a GGUF, an
OpenAI-compatible engine), the queue that bounds the turns waiting for it, and the check that a GGUF
decodes on this CPU before the server loads it.

May import: `models`, `config`, `datafiles`, `errors`.
"""
