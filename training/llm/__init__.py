"""The companion's language model, offline: conversation data prepared for its fine-tune.

`tadbot train prepare` (cli.py, prepare.py) reads counsel-chat and chat dialogs (readers.py), cleans them
(clean.py, cleaning.toml), splits them by question so no question is in two splits (split.py), and writes
chat JSONL with a data card (card.py).
"""
