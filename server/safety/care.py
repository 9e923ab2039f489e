"""What keeps the person safe around the language model, and what helps them without it.

Before the model: the crisis check (a crisis is answered from a script and the model is never asked), the
concern note, and guided exercises asked for or accepted. After it: the output guard on every sentence,
and the offer of an exercise when their face or words show panic. Without it (missing, busy, failed): a
steady talk-down and an exercise. None of this needs the model, so none of it waits for it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.safety.alerts import CrisisAlerts
from server.safety.crisis import Assessment, CrisisDetector, CrisisReply, Level
from server.safety.examples import CrisisExamples
from server.safety.exercises import Exercise, Exercises
from server.safety.guard import OutputGuard
from server.safety.soundalikes import Soundalikes
from server.sections import SafetySection

_LOGGER = logging.getLogger(__name__)

DISTRESS = frozenset({"fear", "sad"})
"""Face readings that, turn after turn, make an exercise worth offering."""

REPEATED_CONCERN_TURNS = 3
"""Concern on this many turns of one session, in a row or not, is answered as a crisis
("repeated_concern"): hopelessness said again and again is a risk no single turn shows. Once reached, every
later concern in the session is a crisis too. A constant, not a config key: a safety floor."""


@dataclass(frozen=True)
class Line:
    """One sentence to stream, and the silence the device keeps after it (exercise pacing)."""

    text: str
    pause_ms: int = 0


@dataclass
class _SessionState:
    distressed_turns: int = 0
    offered: str | None = None
    """The exercise offered at the end of the last reply, waiting for a yes."""
    taken: str | None = None
    """The offer the latest turn read its words against: a turn answered again reads them against it too."""
    last_offer_exchange: int = -(10**9)
    concern_turns: int = 0
    """Turns of this session that read as concern on their own."""
    last_was_crisis: bool = False
    """The person's previous turn was answered as a crisis."""


class Care:
    def __init__(
        self,
        settings: SafetySection,
        *,
        detector: CrisisDetector,
        crisis: CrisisReply,
        exercises: Exercises,
        guard: OutputGuard,
        alerts: CrisisAlerts,
        soundalikes: Soundalikes,
        examples: CrisisExamples | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.soundalikes = soundalikes
        self.examples = examples
        self.crisis = crisis
        self.exercises = exercises
        self.guard = guard
        self.alerts = alerts
        self._sessions: dict[str, _SessionState] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: SafetySection, embedder: Any = None, cache_dir: Path | None = None) -> Care:
        """The shipped rules, scripts and exercises: data files checked once, at start-up. With the text
        `embedder`, crisis also gets the second opinion of the nearest labelled examples."""
        return cls(
            settings,
            detector=CrisisDetector.load(),
            crisis=CrisisReply.load(settings.locale),
            exercises=Exercises.load(),
            guard=OutputGuard.load(),
            alerts=CrisisAlerts(settings.alert_url, settings.alert_timeout_s),
            soundalikes=Soundalikes.load(),
            examples=CrisisExamples.load(embedder, cache_dir) if embedder is not None else None,
        )

    def assess(self, text: str, *, skip_identical: bool = False, second_opinion: bool = True) -> Assessment:
        """The rules' reading, and where they found nothing certain, the nearest examples' second opinion.

        `skip_identical` is for evaluating on the examples themselves. `second_opinion=False` leaves the
        examples out, for an utterance that is only a spoken command: a lone "goodbye" sits near farewell
        notes in meaning, yet it is a goodbye, and the rules still read any words of harm around it."""
        found = self.detector.assess(text)
        if found.level == Level.CRISIS or found.ruled_out or self.examples is None or not second_opinion:
            return found
        try:
            near = self.examples.nearest(text, skip_identical=skip_identical)
        except Exception:
            # The rules have answered; a failing second opinion must not take the check down with it.
            _LOGGER.exception("the crisis examples could not be searched; the rules alone decide")
            return found
        if not near.crisis:
            return found
        return Assessment(
            Level.CRISIS, "similar_example", f"like '{near.example}' ({near.similarity})", found.panic
        )

    def assess_heard(
        self, hypotheses: Sequence[str], *, spoken: bool = False, second_opinion: bool = True
    ) -> tuple[Assessment, int, str]:
        """Every hypothesis the speech engine weighed, best first: the best one's reading, unless another
        reads as a crisis. A misheard word ("bills" for "pills") must not decide whether a person in crisis
        is given the helpline, so when `spoken`, each hypothesis is also read by the rules with its known
        mishearings put back (safety/soundalikes.py). Returns the reading, the index of the hypothesis it
        came from, and the words that read as a crisis when they are not the transcript ("" otherwise)."""
        best = self.assess(hypotheses[0], second_opinion=second_opinion)
        if best.level == Level.CRISIS:
            return best, 0, ""
        for index, other in enumerate(hypotheses[1:], 1):
            found = self.assess(other, second_opinion=second_opinion)
            if found.level == Level.CRISIS:
                return found, index, other
        for index, heard in enumerate(hypotheses if spoken else ()):
            restored = self.soundalikes.restored(heard)
            if restored == heard:
                continue
            found = self.detector.assess(restored)
            if found.level == Level.CRISIS:
                return found, index, restored
        return best, 0, ""

    def across_turns(self, session_id: str, found: Assessment) -> Assessment:
        """This turn's reading in the light of the session so far; call it once per turn, before the reply
        is chosen. Concern becomes crisis on the turn right after a crisis ("concern_after_crisis": the
        helpline was just given and they still sound hopeless), or on the REPEATED_CONCERN_TURNS-th turn of
        concern in the session ("repeated_concern"). The trigger keeps the turn's own rule and words."""
        with self._lock:
            state = self._sessions.setdefault(session_id, _SessionState())
            after_crisis = state.last_was_crisis
            if found.level == Level.CONCERN:
                state.concern_turns += 1
            concerns = state.concern_turns
            if found.level != Level.CONCERN:
                raised = found
            elif after_crisis:
                why = f"{found.trigger} ({found.rule}; on the turn after a crisis)"
                raised = dataclasses.replace(
                    found, level=Level.CRISIS, rule="concern_after_crisis", trigger=why
                )
            elif concerns >= REPEATED_CONCERN_TURNS:
                why = f"{found.trigger} ({found.rule}; concern on {concerns} turns of this session)"
                raised = dataclasses.replace(found, level=Level.CRISIS, rule="repeated_concern", trigger=why)
            else:
                raised = found
            state.last_was_crisis = raised.level == Level.CRISIS
        if raised is not found:
            _LOGGER.warning("session %s: concern read as a crisis (%s)", session_id, raised.rule)
        return raised

    def crisis_lines(self) -> list[Line]:
        return [Line(text) for text in self.crisis.lines]

    def exercise_for(self, session_id: str, text: str, *, again: bool = False) -> Exercise | None:
        """The exercise this utterance asks for, or the one just offered when it says yes to it.

        `again`: the same turn answered again after its first answer broke, so the same choice."""
        asked = self.exercises.asked_for(text)
        with self._lock:
            state = self._sessions.setdefault(session_id, _SessionState())
            if again:
                offered = state.taken
            else:
                offered, state.offered = state.offered, None
                state.taken = offered
        if asked is not None:
            return asked
        if offered is not None and self.exercises.accepted(text):
            return self.exercises.get(offered)
        return None

    def offer(
        self,
        session_id: str,
        exchange: int,
        assessment: Assessment,
        top3: list[dict[str, Any]],
        *,
        again: bool = False,
    ) -> str | None:
        """An exercise to offer after this reply, when their words show panic or their face has shown fear
        or sadness for `safety.offer_after_turns` turns; at most once in `safety.offer_every_turns`.

        `again`: the same exchange answered again after its first answer broke: the offer made then, if
        any, with nothing counted twice."""
        settings = self.settings
        with self._lock:
            state = self._sessions.setdefault(session_id, _SessionState())
            if again:
                if state.offered is None or state.last_offer_exchange != exchange:
                    return None
                return self.exercises.get(state.offered).offer
            top = top3[0] if top3 else None
            if top and top["label"] in DISTRESS and top["score"] >= settings.offer_min_score:
                state.distressed_turns += 1
            else:
                state.distressed_turns = 0
            face = settings.offer_after_turns > 0 and state.distressed_turns >= settings.offer_after_turns
            if not (assessment.panic or face):
                return None
            if exchange - state.last_offer_exchange < settings.offer_every_turns:
                return None
            exercise = self.exercises.get(self.exercises.default)
            state.offered, state.last_offer_exchange = exercise.id, exchange
        _LOGGER.info(
            "session %s: offering %s (%s)", session_id, exercise.id, "words" if assessment.panic else "face"
        )
        return exercise.offer

    def exercise_lines(self, exercise: Exercise) -> list[Line]:
        return [Line(step.text, step.pause_ms) for step in exercise.steps]

    def without_model(self) -> list[Line]:
        """The talk-down and the default exercise: a reply with no model."""
        talk_down = [Line(step.text, step.pause_ms) for step in self.exercises.talk_down]
        return talk_down + self.exercise_lines(self.exercises.get(self.exercises.default))

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def held(self) -> set[str]:
        """The sessions whose state is in memory: each is freed when its session ends."""
        with self._lock:
            return set(self._sessions)
