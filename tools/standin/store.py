"""SQLite state of the stand-in: catalogue, customers, orders, events, meter snapshots.

One connection guarded by a lock, WAL mode, so a restart loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.standin import metering
from tools.standin.clock import iso, now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,
    external_id TEXT UNIQUE, metadata TEXT NOT NULL, created_at REAL NOT NULL,
    modified_at REAL
);
CREATE TABLE IF NOT EXISTS meters (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, filter TEXT NOT NULL,
    aggregation TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, product_id TEXT NOT NULL,
    status TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    recurring_interval TEXT NOT NULL, recurring_interval_count INTEGER NOT NULL,
    anchor REAL NOT NULL, cycle INTEGER NOT NULL DEFAULT 0,
    current_period_start REAL NOT NULL, current_period_end REAL NOT NULL,
    cancel_at_period_end INTEGER NOT NULL DEFAULT 0, canceled_at REAL, started_at REAL,
    ends_at REAL, ended_at REAL, past_due_at REAL, paused_at REAL, seats INTEGER,
    metadata TEXT NOT NULL, pending_order_id TEXT, created_at REAL NOT NULL, modified_at REAL
);
CREATE INDEX IF NOT EXISTS subscriptions_due ON subscriptions (status, current_period_end);
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, price_id TEXT NOT NULL,
    price_amount INTEGER NOT NULL, currency TEXT NOT NULL, recurring_interval TEXT,
    created_at REAL NOT NULL, recurring_interval_count INTEGER NOT NULL DEFAULT 1,
    metered_prices TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, product_id TEXT NOT NULL,
    billing_reason TEXT NOT NULL, seats INTEGER, metadata TEXT NOT NULL,
    amount INTEGER NOT NULL, currency TEXT NOT NULL, subscription TEXT,
    created_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'paid',
    refunded_amount INTEGER NOT NULL DEFAULT 0, modified_at REAL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL, source TEXT NOT NULL, ts REAL NOT NULL,
    customer_id TEXT, external_customer_id TEXT, external_id TEXT UNIQUE,
    metadata TEXT NOT NULL, ingested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_customer ON events (customer_id);
CREATE INDEX IF NOT EXISTS events_external_customer ON events (external_customer_id);
CREATE INDEX IF NOT EXISTS orders_created ON orders (created_at);
CREATE TABLE IF NOT EXISTS customer_meters (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, meter_id TEXT NOT NULL,
    consumed REAL NOT NULL DEFAULT 0, credited INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, modified_at REAL, due_at REAL,
    UNIQUE (customer_id, meter_id)
);
"""

# Columns added after the first release: databases made before get them on open.
_ADDED_COLUMNS = {
    "products": {
        "recurring_interval_count": "INTEGER NOT NULL DEFAULT 1",
        "metered_prices": "TEXT NOT NULL DEFAULT '[]'",
        "metadata": "TEXT NOT NULL DEFAULT '{}'",
        # Polar's meter cycle of its own (`meter_interval`): resets meters between renewals.
        "meter_interval": "TEXT",
        "meter_interval_count": "INTEGER",
        # Meter Credits benefits: [{"id", "meter_id", "units"}].
        "benefits": "TEXT NOT NULL DEFAULT '[]'",
    },
    "orders": {
        "status": "TEXT NOT NULL DEFAULT 'paid'",
        "refunded_amount": "INTEGER NOT NULL DEFAULT 0",
        "modified_at": "REAL",
    },
}


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class UnknownCustomers(Exception):
    """Raised with the batch indexes whose customer_id does not exist."""

    def __init__(self, indexes: list[int]):
        self.indexes = indexes
        super().__init__(f"unknown customer at {indexes}")


def new_id() -> str:
    return str(uuid.uuid4())


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    data = dict(row)
    for key in ("metadata", "filter", "aggregation", "subscription", "metered_prices", "benefits"):
        if isinstance(data.get(key), str):
            data[key] = json.loads(data[key])
    return data


class Store:
    def __init__(self, path: str | Path, *, balance_lag: float = 15.0):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.balance_lag = balance_lag
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # Autocommit connection: BEGIN/COMMIT by hand so a batch is all or nothing.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The shared connection under the store's lock, for modules keeping their own tables."""
        with self._lock:
            yield self._db

    # -- small query helpers ---------------------------------------------------------
    def _one(self, sql: str, args: Iterable[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            return _row(self._db.execute(sql, tuple(args)).fetchone())

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, tuple(args)).fetchall()]

    def _page(
        self,
        table: str,
        where: list[str],
        args: list[Any],
        page: int,
        limit: int,
        order: str = "created_at DESC",
    ) -> tuple[list[dict[str, Any]], int]:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM {table}{clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM {table}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, limit, (page - 1) * limit],
            ).fetchall()
        return [_row(r) for r in rows], total

    # -- customers -------------------------------------------------------------------
    def create_customer(
        self,
        *,
        email: str,
        name: str | None = None,
        external_id: str | None = None,
        metadata: dict | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        customer_id = id or new_id()
        try:
            with self._tx():
                self._db.execute(
                    "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (customer_id, email, name, external_id, json.dumps(metadata or {}), now()),
                )
        except sqlite3.IntegrityError as e:
            raise Conflict("a customer with this id, email or external_id exists") from e
        self._ensure_customer_meters()
        return self.get_customer(customer_id)

    def get_customer(self, customer_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM customers WHERE id = ?", [customer_id])

    def customer_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM customers WHERE external_id = ?", [external_id])

    def list_customers(
        self, *, page: int, limit: int, email: str | None = None, external_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if email is not None:
            where.append("email = ?")
            args.append(email)
        if external_id is not None:
            where.append("external_id = ?")
            args.append(external_id)
        return self._page("customers", where, args, page, limit)

    def first_event_at(self, customer: dict[str, Any]) -> float | None:
        row = self._one(
            "SELECT MIN(ts) AS ts FROM events WHERE source = 'user' AND "
            "(customer_id = ? OR (external_customer_id IS NOT NULL AND external_customer_id = ?))",
            [customer["id"], customer["external_id"]],
        )
        return row["ts"] if row else None

    # -- meters ----------------------------------------------------------------------
    def create_meter(
        self, *, name: str, filter: dict, aggregation: dict, id: str | None = None
    ) -> dict[str, Any]:
        meter_id = id or new_id()
        try:
            with self._tx():
                self._db.execute(
                    "INSERT INTO meters VALUES (?, ?, ?, ?, ?)",
                    (meter_id, name, json.dumps(filter), json.dumps(aggregation), now()),
                )
        except sqlite3.IntegrityError as e:
            raise Conflict("a meter with this id exists") from e
        self._ensure_customer_meters()
        return self.get_meter(meter_id)

    def get_meter(self, meter_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM meters WHERE id = ?", [meter_id])

    def list_meters(self, *, page: int = 1, limit: int = 1000) -> tuple[list[dict], int]:
        return self._page("meters", [], [], page, limit, order="created_at")

    # -- products --------------------------------------------------------------------
    def create_product(
        self,
        *,
        name: str,
        price_amount: int,
        currency: str,
        recurring_interval: str | None,
        id: str | None = None,
        recurring_interval_count: int = 1,
        metered_prices: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        meter_interval: str | None = None,
        meter_interval_count: int | None = None,
        benefits: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        product_id = id or new_id()
        try:
            with self._tx():
                self._db.execute(
                    "INSERT INTO products (id, name, price_id, price_amount, currency, "
                    "recurring_interval, created_at, recurring_interval_count, metered_prices, "
                    "metadata, meter_interval, meter_interval_count, benefits) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        product_id,
                        name,
                        new_id(),
                        price_amount,
                        currency,
                        recurring_interval,
                        now(),
                        recurring_interval_count,
                        json.dumps(metered_prices or []),
                        json.dumps(metadata or {}),
                        meter_interval,
                        meter_interval_count,
                        json.dumps(benefits or []),
                    ),
                )
        except sqlite3.IntegrityError as e:
            raise Conflict("a product with this id exists") from e
        return self.get_product(product_id)

    def get_product(self, product_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM products WHERE id = ?", [product_id])

    def list_products(self, *, page: int, limit: int) -> tuple[list[dict], int]:
        return self._page("products", [], [], page, limit)

    # -- orders ----------------------------------------------------------------------
    def create_order(
        self,
        *,
        customer_id: str,
        product_id: str,
        billing_reason: str,
        seats: int | None,
        metadata: dict,
        amount: int,
        currency: str,
        subscription: dict | None,
        status: str = "paid",
    ) -> dict[str, Any]:
        order_id = new_id()
        at = now()
        with self._tx():
            self._db.execute(
                "INSERT INTO orders (id, customer_id, product_id, billing_reason, seats, "
                "metadata, amount, currency, subscription, created_at, status, modified_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order_id,
                    customer_id,
                    product_id,
                    billing_reason,
                    seats,
                    json.dumps(metadata),
                    amount,
                    currency,
                    json.dumps(subscription) if subscription else None,
                    at,
                    status,
                    at,
                ),
            )
        return self.get_order(order_id)

    def update_order(self, order_id: str, **fields: Any) -> dict[str, Any]:
        fields["modified_at"] = now()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx():
            self._db.execute(f"UPDATE orders SET {sets} WHERE id = ?", [*fields.values(), order_id])
        return self.get_order(order_id)

    def get_order(self, order_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM orders WHERE id = ?", [order_id])

    def list_orders(
        self,
        *,
        page: int,
        limit: int,
        customer_id: list[str] | None = None,
        product_id: list[str] | None = None,
        subscription_id: list[str] | None = None,
        status: list[str] | None = None,
        billing_type: list[str] | None = None,
        external_customer_id: list[str] | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        descending: bool = True,
    ) -> tuple[list[dict], int]:
        where, args = _owner_filters(
            (
                ("customer_id", customer_id),
                ("product_id", product_id),
                ("json_extract(subscription, '$.id')", subscription_id),
                ("status", status),
            ),
            external_customer_id,
        )
        if billing_type and set(billing_type) != {"one_time", "recurring"}:
            # Polar: recurring = subscription creations and renewals, one_time = purchases.
            where.append("billing_reason " + ("=" if "one_time" in billing_type else "!=") + " ?")
            args.append("purchase")
        if created_after is not None:
            where.append("created_at > ?")
            args.append(created_after)
        if created_before is not None:
            where.append("created_at < ?")
            args.append(created_before)
        order = "created_at DESC, rowid DESC" if descending else "created_at, rowid"
        return self._page("orders", where, args, page, limit, order=order)

    # -- subscriptions ---------------------------------------------------------------
    def create_subscription(self, **fields: Any) -> dict[str, Any]:
        fields = {"id": new_id(), "created_at": now(), **fields}
        fields["metadata"] = json.dumps(fields.get("metadata") or {})
        with self._tx():
            self._db.execute(
                f"INSERT INTO subscriptions ({', '.join(fields)}) "
                f"VALUES ({', '.join('?' * len(fields))})",
                list(fields.values()),
            )
        return self.get_subscription(fields["id"])

    def update_subscription(self, subscription_id: str, **fields: Any) -> dict[str, Any]:
        fields["modified_at"] = now()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx():
            self._db.execute(
                f"UPDATE subscriptions SET {sets} WHERE id = ?",
                [*fields.values(), subscription_id],
            )
        return self.get_subscription(subscription_id)

    def get_subscription(self, subscription_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM subscriptions WHERE id = ?", [subscription_id])

    def next_due_subscription(self, until: float) -> dict[str, Any] | None:
        """The active subscription whose period ends first, if that is at or before `until`."""
        return self._one(
            "SELECT * FROM subscriptions WHERE status = 'active' AND current_period_end <= ? "
            "ORDER BY current_period_end, created_at LIMIT 1",
            [until],
        )

    def list_subscriptions(
        self,
        *,
        page: int,
        limit: int,
        customer_id: list[str] | None = None,
        product_id: list[str] | None = None,
        status: list[str] | None = None,
        external_customer_id: list[str] | None = None,
        cancel_at_period_end: bool | None = None,
        descending: bool = True,
    ) -> tuple[list[dict], int]:
        where, args = _owner_filters(
            (("customer_id", customer_id), ("product_id", product_id), ("status", status)),
            external_customer_id,
        )
        if cancel_at_period_end is not None:
            where.append("cancel_at_period_end = ?")
            args.append(int(cancel_at_period_end))
        order = "started_at DESC, rowid DESC" if descending else "started_at, rowid"
        return self._page("subscriptions", where, args, page, limit, order=order)

    # -- events ----------------------------------------------------------------------
    def ingest(self, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Stores a validated batch atomically; returns (inserted, duplicates).

        Raises UnknownCustomers, storing nothing, when a customer_id does not exist.
        """
        ingested_at = now()
        inserted_events: list[dict[str, Any]] = []
        duplicates = 0
        with self._tx():
            unknown = [
                i
                for i, e in enumerate(events)
                if e.get("customer_id") is not None
                and self._db.execute(
                    "SELECT 1 FROM customers WHERE id = ?", (e["customer_id"],)
                ).fetchone()
                is None
            ]
            if unknown:
                raise UnknownCustomers(unknown)
            for e in events:
                ts = e["ts"] if e.get("ts") is not None else ingested_at
                # external_id is UNIQUE: a repeat (earlier call or same batch) is skipped.
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO events (id, name, source, ts, customer_id, "
                    "external_customer_id, external_id, metadata, ingested_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_id(),
                        e["name"],
                        e.get("source", "user"),
                        ts,
                        e.get("customer_id"),
                        e.get("external_customer_id"),
                        e.get("external_id"),
                        json.dumps(e.get("metadata") or {}),
                        ingested_at,
                    ),
                )
                if cur.rowcount == 1:
                    inserted_events.append({**e, "ts": ts})
                else:
                    duplicates += 1
            self._mark_due(inserted_events, ingested_at)
        return len(inserted_events), duplicates

    def _mark_due(self, events: list[dict[str, Any]], at: float) -> None:
        """Debounces balance recomputation: each matching event pushes it back."""
        meters = [_row(r) for r in self._db.execute("SELECT * FROM meters").fetchall()]
        due = at + self.balance_lag
        for e in events:
            customer_id = e.get("customer_id")
            if customer_id is None and e.get("external_customer_id") is not None:
                found = self._db.execute(
                    "SELECT id FROM customers WHERE external_id = ?", (e["external_customer_id"],)
                ).fetchone()
                customer_id = found["id"] if found else None
            if customer_id is None:
                continue
            metadata = e.get("metadata") or {}
            for meter in meters:
                if e.get("source") == "system":
                    hit = metadata.get("meter_id") == meter["id"]
                else:
                    hit = metering.matches(meter["filter"], e["name"], metadata)
                if hit:
                    self._db.execute(
                        "INSERT INTO customer_meters (id, customer_id, meter_id, created_at, "
                        "due_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id, meter_id) "
                        "DO UPDATE SET due_at = excluded.due_at",
                        (new_id(), customer_id, meter["id"], at, due),
                    )

    def add_system_event(self, *, name: str, customer_id: str, metadata: dict[str, Any]) -> None:
        self.ingest(
            [{"name": name, "source": "system", "customer_id": customer_id, "metadata": metadata}]
        )

    def list_events(
        self,
        *,
        page: int,
        limit: int,
        customer_id: str | None = None,
        name: list[str] | None = None,
        source: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        descending: bool = True,
        start: float | None = None,
        end: float | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if start is not None:
            where.append("ts >= ?")
            args.append(start)
        if end is not None:
            where.append("ts <= ?")
            args.append(end)
        if customer_id is not None:
            customer = self.get_customer(customer_id)
            where.append(
                "(customer_id = ? OR (external_customer_id IS NOT NULL "
                "AND external_customer_id = ?))"
            )
            args += [customer_id, customer["external_id"] if customer else None]
        if name:
            where.append(f"name IN ({', '.join('?' * len(name))})")
            args += name
        if source:
            where.append(f"source IN ({', '.join('?' * len(source))})")
            args += source
        for key, value in (metadata or {}).items():
            # Query values are text; compare against the JSON value's text form.
            where.append("CAST(json_extract(metadata, ?) AS TEXT) = ?")
            args += [f'$."{key}"', {"true": "1", "false": "0"}.get(value, value)]
        order = "ts DESC, seq DESC" if descending else "ts, seq"
        return self._page("events", where, args, page, limit, order=order)

    def all_events(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        rows, _ = self.list_events(
            page=1, limit=1_000_000, customer_id=customer_id, descending=False
        )
        return rows

    # -- customer meters -------------------------------------------------------------
    def _ensure_customer_meters(self) -> None:
        # Polar keeps a row for every (customer, meter), at zero until an event arrives.
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO customer_meters (id, customer_id, meter_id, created_at) "
                "SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
                "substr(hex(randomblob(2)), 2) || '-8' || substr(hex(randomblob(2)), 2) || '-' "
                "|| hex(randomblob(6))), c.id, m.id, ? FROM customers c CROSS JOIN meters m",
                (now(),),
            )

    def list_customer_meters(
        self,
        *,
        page: int,
        limit: int,
        customer_id: list[str] | None = None,
        meter_id: list[str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if customer_id:
            where.append(f"customer_id IN ({', '.join('?' * len(customer_id))})")
            args += customer_id
        if meter_id:
            where.append(f"meter_id IN ({', '.join('?' * len(meter_id))})")
            args += meter_id
        rows, total = self._page("customer_meters", where, args, page, limit)
        return [self._refresh(r) for r in rows], total

    def get_customer_meter(self, customer_meter_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM customer_meters WHERE id = ?", [customer_meter_id])
        return self._refresh(row) if row else None

    def _refresh(self, row: dict[str, Any]) -> dict[str, Any]:
        """Recomputes a snapshot lazily once its debounce delay has passed."""
        at = now()
        if self.balance_lag > 0 and (row["due_at"] is None or row["due_at"] > at):
            return row
        with self._tx():
            consumed, credited, latest = self._compute(row["customer_id"], row["meter_id"])
            # modified_at is what callers compare with event timestamps: never before them.
            modified = max(at, latest)
            self._db.execute(
                "UPDATE customer_meters SET consumed = ?, credited = ?, modified_at = ?, "
                "due_at = NULL WHERE id = ?",
                (consumed, credited, modified, row["id"]),
            )
        return {
            **row,
            "consumed": consumed,
            "credited": credited,
            "modified_at": modified,
            "due_at": None,
        }

    def _compute(self, customer_id: str, meter_id: str) -> tuple[float, int, float]:
        meter = _row(self._db.execute("SELECT * FROM meters WHERE id = ?", (meter_id,)).fetchone())
        customer = self._db.execute(
            "SELECT external_id FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
        rows = self._db.execute(
            "SELECT name, source, ts, seq, metadata FROM events WHERE customer_id = ? OR "
            "(external_customer_id IS NOT NULL AND external_customer_id = ?) ORDER BY ts, seq",
            (customer_id, customer["external_id"] if customer else None),
        ).fetchall()
        events = [(r["name"], r["source"], r["ts"], json.loads(r["metadata"])) for r in rows]
        # Rows are in (ts, seq) order: with a manual clock a reset and the grant that follows
        # it share a timestamp, and ingestion order then decides which comes first.
        last_reset = max(
            (
                i
                for i, (name, source, _, md) in enumerate(events)
                if source == "system" and name == "meter.reset" and md.get("meter_id") == meter_id
            ),
            default=-1,
        )
        window = events[last_reset + 1 :]
        consumed_md = [
            md
            for name, source, _, md in window
            if source == "user" and metering.matches(meter["filter"], name, md)
        ]
        credited = sum(
            int(md.get("units", 0))
            for name, source, _, md in window
            if source == "system" and name == "meter.credited" and md.get("meter_id") == meter_id
        )
        latest = max((ts for _, _, ts, _ in window), default=0.0)
        return metering.aggregate(meter["aggregation"], consumed_md), max(credited, 0), latest


def _owner_filters(
    columns: Iterable[tuple[str, list[str] | None]], external_customer_id: list[str] | None
) -> tuple[list[str], list[Any]]:
    """WHERE clauses (and their arguments) for Polar's list filters that take several values."""
    where: list[str] = []
    args: list[Any] = []
    for column, values in columns:
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args += values
    if external_customer_id:
        marks = ", ".join("?" * len(external_customer_id))
        where.append(f"customer_id IN (SELECT id FROM customers WHERE external_id IN ({marks}))")
        args += external_customer_id
    return where, args


def iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)
