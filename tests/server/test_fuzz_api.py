"""The API fuzzed from its own description: every operation of server/api/openapi.json, with schemathesis's
valid and invalid requests, against the real server under gunicorn.

Real device and therapist tokens and real sessions and clients are mixed into the generated requests, so
turns, frames, /end, the export and the erasure are reached, not only their 401s and 404s. Every answer must
be documented (status, content type, schema, headers), no answer may be a 5xx, every 4xx is the JSON error
with a message, and the worker must serve the whole run without a restart. The requests are counted as they
are sent. Hypothesis is derandomized and keeps no example database, so a run is the same run every time and
leaves nothing in the tree.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.mutations import OperatorKind
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import FACE_PHOTOS, ROOT, LiveServer, start_server, stop_server, tadbot
from tests.server.survival import assert_unharmed, error_of, worker_pid
from tests.speech import pcm16_wav

SPEC: dict[str, Any] = json.loads((ROOT / "server" / "api" / "openapi.json").read_text(encoding="utf-8"))
OPERATIONS = [f"{method.upper()} {path}" for path, ops in SPEC["paths"].items() for method in ops]
MIN_REQUESTS = 10_000
EXAMPLES = 640
"""Per operation and mode (valid, invalid): about 11,500 requests planned, 10,000 required."""
REAL_ONE_IN = {
    # A text turn on a real session runs the model (about 0.2 s here), so fewer of them.
    "POST /api/v1/sessions/{session_id}/turns": 5,
    "POST /api/v1/sessions/{session_id}/frames": 4,
    "POST /api/v1/sessions/{session_id}/end": 4,
    "GET /api/v1/sessions/{session_id}": 3,
    "GET /api/v1/sessions/{session_id}/export": 3,
    "DELETE /api/v1/clients/{client}": 8,
    "GET /api/v1/sessions": 3,
    "POST /api/v1/sessions": 3,
}
"""How often a generated session id or client name is replaced by a real one."""
TALK, OTHER, DOOMED = "fuzz-talk", "fuzz-other", [f"fuzz-gone-{i}" for i in range(12)]


def _wav(seconds: float) -> bytes:
    """Silence, a valid 16 kHz mono PCM16 WAV."""
    return pcm16_wav(bytes(int(16000 * seconds) * 2), 16000)


def _png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((48, 64, 3), 128, dtype=np.uint8))
    assert ok
    return encoded.tobytes()


MEDIA = {"wav": _wav(0.5), "png": _png(), "jpeg": (FACE_PHOTOS / "grace_hopper.jpg").read_bytes()}


@dataclass
class World:
    """The live server and the real things the fuzzer mixes in: who it acts as and what it names."""

    server: LiveServer
    other_device_token: str
    talk: list[str]
    """Open sessions for turns and frames: never ended or erased during the run."""
    to_end: list[str]
    ended: str
    foreign: str
    """A session of another device's client, which the test therapist is not assigned either."""
    doomed: list[str]
    """Clients the fuzzer may erase, each with a session."""
    doomed_sessions: list[str]
    clients: list[str]

    def sessions_for(self, label: str) -> list[str]:
        if label.endswith("/end"):
            return [*self.to_end, self.foreign]
        if label.startswith("POST"):
            return [*self.talk, self.ended, self.foreign]
        return [*self.talk, *self.to_end, self.ended, self.foreign, *self.doomed_sessions]


@dataclass
class Ledger:
    """What the run sent and got back, counted at the socket, not from max_examples."""

    sent: int = 0
    answers: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def statuses(self, label: str) -> set[tuple[int, str]]:
        return {(status, code) for (op, status, code) in self.answers if op == label}


class CountingSession(requests.Session):
    """Counts every request that really goes out."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.ledger.sent += 1
        return super().send(request, **kwargs)


def _start_world(root: Path, llm: Path, fer: Path) -> World:
    server = start_server(root, llm=llm, fer=fer)
    server.enroll(TALK, *DOOMED)
    talk = [server.start_session(TALK)["session_id"] for _ in range(3)]
    to_end = [server.start_session(TALK)["session_id"] for _ in range(20)]
    ended = server.start_session(TALK)["session_id"]
    answer = requests.post(
        f"{server.url}/api/v1/sessions/{ended}/end", headers=server.device_headers(), timeout=30
    )
    assert answer.status_code == 200, answer.text
    doomed_sessions = [server.start_session(name)["session_id"] for name in DOOMED]
    made = tadbot("admin", "add-device", "other-pi", "--client", OTHER, env=server.env)
    assert made.returncode == 0, made.stderr
    other = made.stdout.strip().splitlines()[-1]
    answer = requests.post(
        f"{server.url}/api/v1/sessions", headers={"Authorization": f"Bearer {other}"}, json={}, timeout=30
    )
    assert answer.status_code == 201, answer.text
    return World(
        server,
        other,
        talk,
        to_end,
        ended,
        answer.json()["session_id"],
        DOOMED,
        doomed_sessions,
        [TALK, OTHER, "tadbot-doctor", *DOOMED],
    )


_MADE_UP_AUTHORIZATION = st.one_of(
    st.just(""),
    st.builds(
        "{} {}".format,
        st.sampled_from(["Bearer", "bearer", "Basic", "Token"]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    ),
)


def _dice(case: Case, data: st.DataObject) -> random.Random:
    """Dice seeded by the generated request and a drawn salt: the same example rolls the same (a run, and
    a failing example's replay, repeat), and the rolls are uniform, where Hypothesis's own draws favour
    their simplest value and would put nearly every request on the same side. The salt also gives an
    operation with nothing to generate (health, this document) fresh examples."""
    salt = data.draw(st.binary(min_size=8, max_size=8), label="salt")
    body = case.body if isinstance(case.body, (dict, list, str, int, float, bytes)) else None
    generated = (salt, case.path_parameters, case.query, sorted(case.headers.items()), body)
    return random.Random(hashlib.sha256(repr(generated).encode()).digest())


def _mix_in_the_real(world: World, case: Case, data: st.DataObject) -> None:
    """Real tokens for most requests, and sometimes a real session, client or media file, so the request
    gets past authentication and lookup into the handler. A part schemathesis made invalid on purpose is
    left invalid, so the request must still be refused."""
    label = case.operation.label
    server = world.server
    dice = _dice(case, data)
    negative = {where for where in ParameterLocation if case.meta and case.meta.is_negative_at(where)}
    security = case.operation.definition.raw.get("security", [])
    needs = "therapist" if {"therapistToken": []} in security else "device"
    if security == [] or {} in security:
        needs = dice.choice(["device", "therapist"])
    right, wrong = (server.device_token, server.therapist_token)[:: 1 if needs == "device" else -1]
    # A negated header may be the missing token itself: a token is put back only when another part
    # keeps the request invalid.
    if ParameterLocation.HEADER not in negative or negative - {ParameterLocation.HEADER}:
        roll = dice.random()
        if roll < 0.7:
            case.headers["Authorization"] = f"Bearer {right}"
        elif roll < 0.9:
            case.headers["Authorization"] = f"Bearer {wrong if roll < 0.8 else world.other_device_token}"
        else:
            case.headers["Authorization"] = data.draw(_MADE_UP_AUTHORIZATION, label="authorization")
            if not case.headers["Authorization"]:
                del case.headers["Authorization"]
    if label not in REAL_ONE_IN or dice.random() >= 1 / REAL_ONE_IN[label]:
        return
    if ParameterLocation.PATH not in negative and "session_id" in case.path_parameters:
        case.path_parameters["session_id"] = dice.choice(world.sessions_for(label))
    if ParameterLocation.PATH not in negative and "client" in case.path_parameters:
        case.path_parameters["client"] = dice.choice([*world.doomed, OTHER])
    if ParameterLocation.QUERY not in negative and label == "GET /api/v1/sessions":
        case.query["client"] = dice.choice(world.clients)
    if ParameterLocation.BODY in negative or not isinstance(case.body, dict):
        return
    form: dict[str, Any] = case.body
    if label == "POST /api/v1/sessions":
        form["client"] = dice.choice(world.clients)
    if "audio" in form and dice.random() < 1 / 3:
        form["audio"] = MEDIA["wav"]
    if "frame" in form and dice.random() < 1 / 2:
        frames = [MEDIA[dice.choice(["png", "jpeg"])] for _ in range(dice.randint(1, 3))]
        form["frame"] = frames[0] if label.endswith("/frames") else frames


def _header(response: Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def errors_are_json_with_a_message(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx is {"error": {"code", "message"}}; a 503 or a turn_in_progress says when to come back."""
    if response.status_code < 400:
        return None
    error = error_of(response.status_code, _header(response, "Content-Type") or "", response.content)
    if response.status_code == 503 or error["code"] == "turn_in_progress":
        assert (_header(response, "Retry-After") or "").isdigit(), error
    return True


_TURN_EVENT = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/TurnEvent", "components": SPEC["components"]}
)


def turn_streams_are_ndjson_events(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A turn's 200 is NDJSON: each line a documented event, the first the transcript, the last done or
    error (schemathesis has no NDJSON reader, so the spec's TurnEvent is checked here)."""
    if not case.operation.label.endswith("/turns") or response.status_code != 200:
        return None
    lines = response.content.decode("utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    for item in events:
        _TURN_EVENT.validate(item)
    assert events[0]["type"] == "transcript" and events[-1]["type"] in ("done", "error"), events
    return True


def invalid_requests_are_refused(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis's negative_data_rejection less one false alarm: a multipart field is text on the wire,
    so a `text` it generated as a number, null, object or list arrives as valid text ("674") and is
    rightly answered."""
    mutations = getattr(case.meta.phase.data, "mutations", ()) if case.meta else ()
    retyped_text_only = bool(mutations) and all(
        (m.operator, m.parameter_location, m.parameter)
        == (OperatorKind.CHANGE_TYPE, ParameterLocation.BODY, "text")
        for m in mutations
    )
    if retyped_text_only and case.media_type == "multipart/form-data":
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    invalid_requests_are_refused,
    errors_are_json_with_a_message,
    turn_streams_are_ndjson_events,
]


def _fuzz(world: World, schema: Any, label: str, mode: GenerationMode, ledger: Ledger) -> None:
    operation = schema.find_operation_by_label(label)
    session = CountingSession(ledger)

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Case, data: st.DataObject) -> None:
        _mix_in_the_real(world, case, data)
        response = case.call(base_url=world.server.url, session=session, timeout=60)
        code = ""
        if response.status_code >= 400 and response.content.startswith(b"{"):
            code = str(json.loads(response.content).get("error", {}).get("code", ""))
        ledger.answers[(label, response.status_code, code)] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # the checks' FailureGroup is a BaseExceptionGroup
        ledger.failures[f"{label} ({mode.value})"] = str(exc)
    finally:
        session.close()


def _has_inputs(schema: Any, label: str) -> bool:
    """Whether schemathesis can make an invalid request for it: health and this document take no input."""
    definition = schema.find_operation_by_label(label).definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_fer: Path
) -> Iterator[tuple[World, Ledger, int]]:
    """The whole run, once per module; each test below reads its ledger."""
    world = _start_world(tmp_path_factory.mktemp("fuzz"), tiny_gguf, tiny_fer)
    # Hypothesis caches what it learns (constants, Unicode tables) under .hypothesis; not in the tree.
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    try:
        worker = worker_pid(world.server)
        config = schemathesis.Config.from_dict(
            {
                "request-retries": 0,
                "checks": {"negative_data_rejection": {"expected-statuses": ["4xx"]}},
            }
        )
        schema = schemathesis.openapi.from_dict(SPEC, config=config)
        ledger = Ledger()
        started = time.monotonic()
        # The erasures last, so the sessions the others read are still there for most of the run.
        for label in sorted(OPERATIONS, key=lambda op: op.startswith("DELETE")):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.POSITIVE or _has_inputs(schema, label):
                    _fuzz(world, schema, label, mode, ledger)
        ledger.seconds = time.monotonic() - started
        yield world, ledger, worker
    finally:
        set_hypothesis_home_dir(None)
        stop_server(world.server)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_is_documented_and_never_a_server_error(
    fuzzed: tuple[World, Ledger, int], label: str
) -> None:
    _, ledger, _ = fuzzed
    failed = {run: message for run, message in ledger.failures.items() if run.startswith(f"{label} (")}
    assert not failed, "\n\n".join(f"{run}:\n{message}" for run, message in failed.items())
    assert all(status < 500 for status, _ in ledger.statuses(label))


# What each operation must have answered at least once: proof that the run got past the gate.
REACHED = {
    "GET /api/v1/health": {(200, "")},
    "GET /api/v1/openapi.json": {(200, "")},
    "POST /api/v1/sessions": {(201, ""), (400, "bad_client"), (400, "client_required"), (401, "bad_token")},
    "GET /api/v1/sessions": {(200, ""), (404, "unknown_client"), (401, "bad_token")},
    "GET /api/v1/sessions/{session_id}": {(200, ""), (404, "unknown_session")},
    "GET /api/v1/sessions/{session_id}/export": {(200, ""), (400, "bad_format"), (404, "unknown_session")},
    "POST /api/v1/sessions/{session_id}/turns": {
        (200, ""),
        (400, "bad_turn"),
        (400, "bad_audio"),
        (404, "unknown_session"),
        (409, "session_ended"),
        (415, "bad_image"),
        (401, "bad_token"),
    },
    "POST /api/v1/sessions/{session_id}/frames": {
        (200, ""),
        (400, "bad_frame"),
        (409, "session_ended"),
        (415, "bad_image"),
    },
    "POST /api/v1/sessions/{session_id}/end": {(200, ""), (404, "unknown_session")},
    "DELETE /api/v1/clients/{client}": {(200, ""), (404, "unknown_client")},
}


def test_every_operation_was_reached_past_the_gate(fuzzed: tuple[World, Ledger, int]) -> None:
    _, ledger, _ = fuzzed
    assert set(REACHED) == set(OPERATIONS)
    missing = {label: sorted(wanted - ledger.statuses(label)) for label, wanted in REACHED.items()}
    assert not any(missing.values()), missing


def test_ten_thousand_requests_and_the_worker_never_restarted(fuzzed: tuple[World, Ledger, int]) -> None:
    world, ledger, worker = fuzzed
    server_errors = sum(n for (_, status, _), n in ledger.answers.items() if status >= 500)
    print(f"fuzz: {ledger.sent} requests in {ledger.seconds:.0f} s, {server_errors} answered 5xx")
    assert ledger.sent >= MIN_REQUESTS
    assert sum(ledger.answers.values()) == ledger.sent, "a request went out and got no answer"
    assert server_errors == 0
    assert_unharmed(world.server, worker)
    answer = requests.post(
        f"{world.server.url}/api/v1/sessions/{world.talk[0]}/turns",
        headers=world.server.device_headers(),
        files={"text": (None, "I feel a little calmer now")},
        timeout=60,
    )
    assert answer.status_code == 200
    assert json.loads(answer.text.splitlines()[-1])["type"] == "done"
