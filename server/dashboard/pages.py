"""The dashboard's pages: a therapist's clients, one client's trends, one session read turn by turn, its
exports, and erasing a client. Every page shows only the reader's own clients (another's reads as absent) and
every read, export and erasure is in the audit log."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, tzinfo
from typing import Any

from flask import Response, redirect, request, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from server.app import access, companion
from server.dashboard import overview
from server.dashboard.charts import emotion_timeline_svg, emotion_timeline_table, trend_svg, trend_table
from server.dashboard.report import session_pdf
from server.dashboard.timeline import build_timeline, trend_row

# The dashboard's one blueprint is made in web.py; the app registers it from here, with these pages on it.
from server.dashboard.web import bp, current, page
from server.errors import NotFound
from server.records.export import EXPORTERS

TREND_SESSIONS = 30
"""The newest sessions a client's trend charts draw."""
TRENDS = (
    ("duration", "Session length"),
    ("turns", "Things said per session"),
    ("fear_share", "Share of face readings showing fear"),
    ("sad_share", "Share of face readings showing sadness"),
)


def _tz() -> tzinfo:
    return companion().settings.dashboard.tzinfo()


def _when(t: float | None, fmt: str = "%a %d %b %Y, %H:%M") -> str:
    return datetime.fromtimestamp(t, _tz()).strftime(fmt) if t else ""


def _readable(client: str) -> None:
    if not access().may_read(current().caller, client):
        raise NotFound("unknown_client", f"no client {client!r} among those assigned to you")


def _session_log(session_id: str) -> dict[str, Any]:
    access().require_session(current().caller, session_id)
    return companion().records.session_log(session_id)


@bp.get("/")
def clients() -> tuple[str, int]:
    login = current()
    rows = overview.clients(companion().records, login.caller.id)
    companion().records.audit(login.caller.actor, "list_clients", f"{len(rows)} clients")
    for row in rows:
        row["last"] = _when(row["last_session"])
    return page("clients.html", rows=rows, zone=_zone_name())


@bp.get("/clients/<client>")
def client(client: str) -> tuple[str, int]:
    login = current()
    _readable(client)
    records = companion().records
    sessions = overview.sessions(records, login.caller.id, client)
    records.audit(login.caller.actor, "read_client", client)
    newest = [records.session_log(s["id"]) for s in sessions[:TREND_SESSIONS]]
    trend = [trend_row(log) for log in reversed(newest)]
    tz = _tz()
    charts = [
        {
            "title": title,
            "svg": trend_svg(trend, metric, tz, title),
            "table": trend_table(trend, metric, tz),
        }
        for metric, title in TRENDS
    ]
    for row in sessions:
        row["when"] = _when(row["started_at"])
        row["minutes"] = round(((row["ended_at"] or row["started_at"]) - row["started_at"]) / 60)
    return page("client.html", client=client, sessions=sessions, charts=charts, zone=_zone_name())


@bp.get("/sessions/<session_id>")
def session(session_id: str) -> tuple[str, int]:
    login = current()
    log = _session_log(session_id)
    records = companion().records
    records.audit(login.caller.actor, "read_session", session_id)
    overview.mark_read(records, login.caller.id, session_id)
    tz = _tz()
    timeline = build_timeline(log)
    return page(
        "session.html",
        log=log,
        started=_when(log["started_at"]),
        ended=_when(log["ended_at"]) if log["ended_at"] else "still open",
        turns=_conversation(log),
        flags=_flag_counts(log),
        chart=emotion_timeline_svg(timeline, tz),
        table=emotion_timeline_table(timeline, tz),
        zone=_zone_name(),
    )


@bp.get("/sessions/<session_id>/export.<fmt>")
def export(session_id: str, fmt: str) -> Response:
    login = current()
    if fmt != "pdf" and fmt not in EXPORTERS:
        raise NotFound("bad_format", "export as pdf, " + ", ".join(EXPORTERS))
    log = _session_log(session_id)
    companion().records.audit(login.caller.actor, f"export_{fmt}", session_id)
    if fmt == "pdf":
        body: str | bytes = session_pdf(log, tz=_tz(), reader=login.caller.name)
        mimetype = "application/pdf"
    else:
        body, mimetype = EXPORTERS[fmt](log)
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="tadbot-session-{session_id}.{fmt}"'},
    )


@bp.get("/clients/<client>/erase")
def erase(client: str) -> tuple[str, int]:
    login = current()
    if not access().may_erase(login.caller, client):
        raise NotFound("unknown_client", f"no client {client!r} among those you may erase")
    return page(
        "erase.html",
        client=client,
        counts=overview.erasure(companion().records, client),
        links=access().links(client),
        error="",
    )


@bp.post("/clients/<client>/erase")
def erase_post(client: str) -> BaseResponse | tuple[str, int]:
    login = current()
    if not access().may_erase(login.caller, client):
        raise NotFound("unknown_client", f"no client {client!r} among those you may erase")
    if request.form.get("confirm", "").strip() != client:
        return page(
            "erase.html",
            400,
            client=client,
            counts=overview.erasure(companion().records, client),
            links=access().links(client),
            error=f"type the pseudonym {client} exactly to confirm; nothing was erased",
        )
    erased = companion().forget_client(client, login.caller.actor)
    return redirect(url_for("dashboard.clients", erased=client, sessions=erased["sessions"]))


def _zone_name() -> str:
    return datetime.now(_tz()).strftime("%Z (UTC%z)")


def _flag_counts(log: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for event in log["safety_events"]:
        counts[event["level"]] += 1
    return dict(counts)


def _conversation(log: dict[str, Any]) -> list[dict[str, Any]]:
    """The turns in order, each with the safety events raised on it; an event with no turn (a blocked
    sentence) goes with the first turn written at or after it: the reply it was cut from."""
    by_turn: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    turns = log["turns"]
    for event in log["safety_events"]:
        owner = event["turn_id"]
        if owner is None:
            after = [t["id"] for t in turns if t["created_at"] >= event["t"]]
            owner = after[0] if after else (turns[-1]["id"] if turns else None)
        by_turn[owner].append({**event, "when": _when(event["t"], "%H:%M:%S")})
    said = 0
    shown = []
    for turn in turns:
        if turn["role"] == "user":
            said += 1
        shown.append(
            {
                **turn,
                "speaker": "Person" if turn["role"] == "user" else "TADBot",
                "label": f"T{said}" if turn["role"] == "user" else "",
                "when": _when(turn["created_at"], "%H:%M:%S"),
                "events": by_turn.get(turn["id"], []),
                "interrupted": bool(turn["timings"].get("interrupted")),
            }
        )
    return shown
