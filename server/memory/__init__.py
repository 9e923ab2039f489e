"""The vector memory of past sessions: a chromadb store and the offline text embedder it uses.

May import: `models`, `config`, `datafiles`, `errors`.
"""
