"""Where a reply is decided and a session lives: the turn router, the session service, the prompt, the
history and its running summary, the sentence splitter, the language-model backends and their queue.

May import: `speech`, `face`, `safety`, `memory`, `records`, `models`, `config`, `datafiles`, `errors`.
"""
