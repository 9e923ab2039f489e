"""Spoken commands ("start over", "goodbye", "be quiet") read from `data/commands.toml`.

The person can only talk to the box, so starting over, ending and asking for silence are said aloud. The
server recognises them, so the device matches nothing itself and the model is never asked to play along:
the engine tags the turn, answers from the file, and the device acts on the tag. A panicking person says
"stop" about what they feel as often as to the box, so a command matches only when it is the whole
utterance once the filler words around it are gone. The wording lives in the data file; this module checks
it once at start-up (a bad file is one ConfigError that names the file and the key) and says which
command, if any, an utterance is.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.datafiles import DataFile, Invalid

# The one normaliser for matching speech against data-file patterns; exercises.toml and commands.toml are
# written for the same plain text.
from server.safety.plain import patterns, plain_words

_LOGGER = logging.getLogger(__name__)

VERSION = 1
"""The layout of commands.toml this code reads; a file of another version is refused, not half-read."""

_TOP_KEYS = frozenset({"version", "fillers"})
_COMMAND_KEYS = frozenset({"patterns", "reply"})


class CommandName(enum.StrEnum):
    """The commands the device acts on: a closed set, because the device's code knows each one."""

    NEW_SESSION = "new_session"
    """End this session and begin a fresh one."""
    END_SESSION = "end_session"
    """End the session, after a polite goodbye."""
    PAUSE = "pause"
    """Stop speaking."""


@dataclass(frozen=True)
class Command:
    """One command, ready to answer."""

    name: CommandName
    reply: tuple[str, ...]
    """The sentences said in reply, in order; none for a command that asks for silence."""
    patterns: tuple[re.Pattern[str], ...]
    """Each must match the whole of the plain utterance, once the fillers are stripped (see `match`)."""


@dataclass(frozen=True)
class Commands:
    """Every command in the file, and which one an utterance is."""

    by_name: Mapping[CommandName, Command]
    """Every command, in file order, which is the order their patterns are tried in."""
    leading: re.Pattern[str]
    """One filler at the start of the plain text, with the space after it."""
    trailing: re.Pattern[str]
    """One filler at the end of the plain text, with the space before it."""

    @classmethod
    def load(cls) -> Commands:
        """The packaged commands.toml, checked."""
        return COMMANDS_FILE.load()

    def match(self, text: str) -> Command | None:
        """The command the recognised `text` is, or None when it is anything more than a command.

        The text is made plain (as for exercises), the fillers are stripped from both ends as often as they
        appear, and what is left must match one of a command's patterns in full. Nothing left is no command:
        "okay, thank you" is talk, not a request.
        """
        left = self.core(plain_words(text))
        if not left:
            return None
        for command in self.by_name.values():
            for pattern in command.patterns:
                if pattern.fullmatch(left):
                    _LOGGER.debug("command %s (pattern %r)", command.name, pattern.pattern)
                    return command
        return None

    def core(self, plain: str) -> str:
        """`plain` without the fillers at either end."""
        while True:
            shorter = self.trailing.sub("", self.leading.sub("", plain, count=1), count=1)
            if shorter == plain:
                return plain
            plain = shorter


def _parse(document: dict[str, Any]) -> Commands:
    known = {str(name) for name in CommandName}
    allowed = ", ".join(sorted(_TOP_KEYS | known))
    for key in document:
        if key not in _TOP_KEYS and key not in known:
            raise Invalid(f"unknown key {key!r}; allowed: {allowed}")
    for key in ("fillers", *CommandName):
        if key not in document:
            raise Invalid(f"missing key {str(key)!r}")
    fillers = "|".join(p.pattern for p in patterns(document["fillers"], "fillers", grouped=True))
    by_name = {
        CommandName(key): _command(CommandName(key), value) for key, value in document.items() if key in known
    }
    return Commands(
        by_name=by_name,
        leading=re.compile(rf"^(?:{fillers})(?: |$)", re.IGNORECASE),
        trailing=re.compile(rf"(?:^| )(?:{fillers})$", re.IGNORECASE),
    )


def _command(name: CommandName, table: object) -> Command:
    where = f"[{name}]"
    if not isinstance(table, dict):
        raise Invalid(f"{name} = {table!r}; expected a table [{name}] with patterns and reply")
    for key in table:
        if key not in _COMMAND_KEYS:
            raise Invalid(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(_COMMAND_KEYS))}")
    for key in sorted(_COMMAND_KEYS):
        if key not in table:
            raise Invalid(f"{where}: missing key {key!r}")
    return Command(
        name=name,
        reply=_reply(table["reply"], f"{where} reply"),
        patterns=patterns(table["patterns"], f"{where} patterns", grouped=True),
    )


def _reply(value: object, where: str) -> tuple[str, ...]:
    """Spoken sentences, each one line ending with . ? or !; an empty list is a silent reply."""
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of sentences ([] for none)")
    for index, line in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(line, str) or not line.strip() or line != line.strip() or "\n" in line:
            raise Invalid(f"{at} = {line!r}; expected one line of text")
        if not line.endswith((".", "?", "!")):
            raise Invalid(f"{at} = {line!r}; a spoken sentence ends with . ? or !")
    return tuple(value)


COMMANDS_FILE = DataFile("server/data/commands.toml", VERSION, "commands_invalid", _parse)
