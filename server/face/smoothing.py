"""Per-session smoothing of face readings, so the companion reacts to how the face has looked, not to one
frame's flicker.

An exponential moving average over each emotion's probability: every frame with a face moves the
session's estimate `alpha` of the way towards what that frame showed. Frames with no face leave it as it
was. The timeline keeps each raw frame; the turn's `emotions` event and the prompt's face note get the
smoothed reading.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping


class EmotionSmoother:
    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        self._alpha = alpha
        self._sessions: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def update(self, session_id: str, probs: Mapping[str, float]) -> dict[str, float]:
        """Fold one face's probabilities into the session's estimate and return the estimate."""
        with self._lock:
            now = self._sessions.get(session_id)
            if now is None:
                now = dict(probs)
            else:
                for label in now.keys() | probs.keys():
                    before = now.get(label, 0.0)
                    now[label] = before + self._alpha * (probs.get(label, 0.0) - before)
            self._sessions[session_id] = now
            return dict(now)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def held(self) -> set[str]:
        """The sessions with an estimate in memory: each is freed when its session ends."""
        with self._lock:
            return set(self._sessions)
