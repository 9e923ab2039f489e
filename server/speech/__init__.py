"""Where audio enters: a WAV upload becomes words and their confidence (the STT engines).

May import: `models`, `config`, `datafiles`, `errors`.
"""
