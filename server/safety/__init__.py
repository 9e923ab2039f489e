"""What keeps the person safe around the language model, and what helps without it: the crisis rules
(`crisis.py`) and their labelled second opinion (`examples.py`), words speech recognition mishears
(`soundalikes.py`), the output guard (`guard.py`), guided exercises, spoken commands, the crisis alert,
and `care.py`, the one door the conversation goes through.

May import: `models`, `config`, `datafiles`, `errors`.
"""
