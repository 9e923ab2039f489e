"""Text made plain before patterns read it: one lower-casing and quote-straightening for every matcher.

Whisper, a keyboard and the language model write "I'm" with any of several apostrophes, and the patterns in
the data files are written with the straight one. The crisis rules, the output guard, the crisis examples,
exercises and commands all read text made plain here, so the same words match the same way everywhere.
Exercises and commands also compile their data files' patterns here, one way.
"""

from __future__ import annotations

import re

from server.datafiles import Invalid

# Curly single quotes, the modifier apostrophe and the prime become ', the double ones become ".
_QUOTES = str.maketrans("‘’‚‛ʼ′“”„‟″", "''''''\"\"\"\"\"")
_APOSTROPHES = re.compile("['`]")
_NOT_WORD = re.compile(r"[\W_]+")


def lowered(text: str) -> str:
    """`text` in lower case with straight quotes: what every pattern-matcher here starts from."""
    return text.translate(_QUOTES).lower()


def plain_words(text: str) -> str:
    """Only the words, for matching speech against data-file patterns (exercises.toml, commands.toml are
    written for it): lower case, apostrophes dropped ("dont"), other marks turned to single spaces."""
    return _NOT_WORD.sub(" ", _APOSTROPHES.sub("", lowered(text))).strip()


def patterns(value: object, where: str, *, grouped: bool = False) -> tuple[re.Pattern[str], ...]:
    """A data file's non-empty list of regular expressions, compiled case-blind; `where` names it when it is
    bad. `grouped` wraps each in (?:...), so a top-level alternation ('quiet|hush') still has to match the
    whole text."""
    if not isinstance(value, list) or not value:
        raise Invalid(f"{where}: expected a non-empty list of regular expressions")
    compiled = []
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str) or not pattern:
            raise Invalid(f"{where}[{index}] = {pattern!r}; expected a regular expression")
        try:
            compiled.append(re.compile(f"(?:{pattern})" if grouped else pattern, re.IGNORECASE))
        except re.error as exc:
            raise Invalid(f"{where}[{index}] = {pattern!r} is not a regular expression ({exc})") from None
    return tuple(compiled)
