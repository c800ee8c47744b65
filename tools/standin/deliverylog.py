"""SQLite tables of webhook delivery: events, their delivery attempts, and the one endpoint's state.

Uses the Store's connection and lock; the delivery engine is the only writer.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from tools.standin.clock import now, parse_iso
from tools.standin.store import Store, new_id

# The stand-in has one endpoint (the configured target): a stable id across restarts.
ENDPOINT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "polar-standin/webhook-endpoint"))
# Polar disables an endpoint whose last 10 events all failed.
DISABLE_AFTER_FAILED_EVENTS = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, webhook_id TEXT NOT NULL,
    type TEXT NOT NULL, payload TEXT NOT NULL, timestamp_offset INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, modified_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER, last_http_code INTEGER, retry_at REAL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL, created_at REAL NOT NULL, succeeded INTEGER NOT NULL,
    http_code INTEGER, response TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE TABLE IF NOT EXISTS webhook_endpoint (
    id TEXT PRIMARY KEY, enabled INTEGER NOT NULL, counted_after_seq INTEGER NOT NULL,
    created_at REAL NOT NULL, modified_at REAL
);
"""


def _event(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    data = dict(row)
    data["payload"] = json.loads(data["payload"])
    return data


class DeliveryLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        with store.connection() as db:
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO webhook_endpoint VALUES (?, 1, 0, ?, NULL)",
                (ENDPOINT_ID, now()),
            )

    # -- endpoint ----------------------------------------------------------------------
    def endpoint(self) -> dict[str, Any]:
        with self._store.connection() as db:
            row = dict(db.execute("SELECT * FROM webhook_endpoint").fetchone())
        row["enabled"] = bool(row["enabled"])
        return row

    def enable(self) -> None:
        """Re-enables the endpoint; only events created from now on count towards disabling."""
        with self._store.connection() as db:
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM webhook_events").fetchone()[0]
            db.execute(
                "UPDATE webhook_endpoint SET enabled = 1, counted_after_seq = ?, modified_at = ?",
                (last, now()),
            )

    def consecutive_failed_events(self) -> int:
        with self._store.connection() as db:
            after = db.execute("SELECT counted_after_seq FROM webhook_endpoint").fetchone()[0]
            rows = db.execute(
                "SELECT succeeded FROM webhook_events WHERE seq > ? ORDER BY seq DESC LIMIT ?",
                (after, DISABLE_AFTER_FAILED_EVENTS),
            ).fetchall()
        count = 0
        for (succeeded,) in rows:
            # An event counts as failed once its latest attempt failed; untried ones stop the run.
            if succeeded != 0:
                break
            count += 1
        return count

    def disable_if_failing(self) -> bool:
        if self.consecutive_failed_events() < DISABLE_AFTER_FAILED_EVENTS:
            return False
        with self._store.connection() as db:
            db.execute("UPDATE webhook_endpoint SET enabled = 0, modified_at = ?", (now(),))
            # Polar stops delivering to a disabled endpoint: pending retries are dropped too.
            db.execute("UPDATE webhook_events SET retry_at = NULL WHERE retry_at IS NOT NULL")
        return True

    # -- events and attempts -----------------------------------------------------------
    def create_event(
        self, webhook_id: str, event_type: str, payload: dict[str, Any], timestamp_offset: int
    ) -> dict[str, Any]:
        event_id = new_id()
        with self._store.connection() as db:
            db.execute(
                "INSERT INTO webhook_events (id, webhook_id, type, payload, timestamp_offset,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, webhook_id, event_type, json.dumps(payload), timestamp_offset, now()),
            )
        return self.get_event(event_id)

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        with self._store.connection() as db:
            return _event(
                db.execute("SELECT * FROM webhook_events WHERE id = ?", (event_id,)).fetchone()
            )

    def pending_retries(self) -> list[dict[str, Any]]:
        with self._store.connection() as db:
            rows = db.execute(
                "SELECT * FROM webhook_events WHERE retry_at IS NOT NULL ORDER BY retry_at"
            ).fetchall()
        return [_event(r) for r in rows]

    def record_delivery(
        self, event_id: str, attempt: int, result: dict[str, Any], *, outcome: bool
    ) -> bool:
        """Stores one attempt; `outcome` ones also set the event's state. Returns success."""
        code = result.get("status_code")
        ok = code is not None and 200 <= code < 300
        body = result.get("body")
        response = body if isinstance(body, str) or body is None else json.dumps(body)
        at = now()
        with self._store.connection() as db:
            db.execute(
                "INSERT INTO webhook_deliveries (id, event_id, attempt, created_at, succeeded,"
                " http_code, response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id(), event_id, attempt, at, int(ok), code, response),
            )
            if outcome:
                db.execute(
                    "UPDATE webhook_events SET attempts = MAX(attempts, ?), succeeded = ?,"
                    " last_http_code = ?, modified_at = ?, retry_at = NULL WHERE id = ?",
                    (attempt, int(ok), code, at, event_id),
                )
        return ok

    def set_retry(self, event_id: str, retry_at: float | None) -> None:
        with self._store.connection() as db:
            db.execute("UPDATE webhook_events SET retry_at = ? WHERE id = ?", (retry_at, event_id))

    def list_deliveries(
        self,
        *,
        page: int,
        limit: int,
        succeeded: bool | None = None,
        start: str | None = None,
        end: str | None = None,
        http_code_class: str | None = None,
        event_types: list[str] | None = None,
        query: str | None = None,
    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], int]:
        where, args = [], []
        if succeeded is not None:
            where.append("d.succeeded = ?")
            args.append(int(succeeded))
        if start:
            where.append("d.created_at >= ?")
            args.append(parse_iso(start))
        if end:
            where.append("d.created_at <= ?")
            args.append(parse_iso(end))
        if http_code_class:
            low = int(http_code_class[0]) * 100
            where.append("d.http_code BETWEEN ? AND ?")
            args += [low, low + 99]
        if event_types:
            where.append(f"e.type IN ({', '.join('?' * len(event_types))})")
            args += event_types
        if query:
            where.append("e.payload LIKE ?")
            args.append(f"%{query}%")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        joined = "FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
        with self._store.connection() as db:
            total = db.execute(f"SELECT COUNT(*) {joined}{clause}", args).fetchone()[0]
            rows = db.execute(
                f"SELECT d.*, e.id AS e_id {joined}{clause} ORDER BY d.seq DESC LIMIT ? OFFSET ?",
                [*args, limit, (page - 1) * limit],
            ).fetchall()
        return [(dict(r), self.get_event(r["e_id"])) for r in rows], total
