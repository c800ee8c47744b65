"""Runs the local Polar stand-in as a real subprocess for tests, with sync admin helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


class StandinProcess:
    """`python -m tools.standin serve` on a free 127.0.0.1 port, stopped by PID."""

    def __init__(
        self,
        db_path: str | Path,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        balance_lag: float = 0.0,
        token: str = "polar_standin_dev_token",
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.db_path = str(db_path)
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.balance_lag = balance_lag
        self.token = token
        # More `serve` flags / env, e.g. ["--webhook-retry-scale", "0.001", "--preset", "sandbox"].
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr_path: str | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the stand-in is not running; call start() first")
        return self._process.pid

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> StandinProcess:
        env = {**os.environ, "STANDIN_TOKEN": self.token, **self.extra_env}
        env.pop("STANDIN_WEBHOOK_URL", None)
        env.pop("STANDIN_WEBHOOK_SECRET", None)
        if self.webhook_url and self.webhook_secret:
            # Through the environment, not argv: command lines are visible to every user.
            env["STANDIN_WEBHOOK_URL"] = self.webhook_url
            env["STANDIN_WEBHOOK_SECRET"] = self.webhook_secret
        self._remove_log()
        fd, self._stderr_path = tempfile.mkstemp(prefix="standin-", suffix=".log")
        os.close(fd)
        with open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tools.standin",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--db",
                    self.db_path,
                    "--balance-lag",
                    str(self.balance_lag),
                    *self.extra_args,
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code, tail = self._process.returncode, self.stderr_tail()
                self.stop()
                raise RuntimeError(f"stand-in exited with {code}:\n{tail}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        tail = self.stderr_tail()
        self.stop()
        raise RuntimeError(f"stand-in not healthy after {START_TIMEOUT_SECONDS}s:\n{tail}")

    def stderr_tail(self, lines: int = 40) -> str:
        if not self._stderr_path or not os.path.exists(self._stderr_path):
            return ""
        with open(self._stderr_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def _remove_log(self) -> None:
        if self._stderr_path and os.path.exists(self._stderr_path):
            os.remove(self._stderr_path)
        self._stderr_path = None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            self._remove_log()
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
        self._remove_log()

    def restart(self) -> None:
        """Same database, same port; the webhook target last set is kept."""
        self.stop()
        self.start()

    def set_webhook_target(self, url: str, secret: str) -> None:
        self.webhook_url, self.webhook_secret = url, secret
        if self._process is not None:
            self.admin("POST", "/admin/webhook-target", {"url": url, "secret": secret})

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin surface -----------------------------------------------------------------
    def admin(self, method: str, path: str, json: Any = None) -> dict:
        response = httpx.request(
            method,
            f"{self.base_url}{path}",
            json=json,
            timeout=30.0,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def create_customer(
        self,
        email: str | None = None,
        name: str = "Test Buyer",
        id: str | None = None,
        external_id: str | None = None,
        metadata: dict | None = None,
    ) -> dict:
        """Emails are unique per organization: the default is a fresh one each call."""
        email = email or f"buyer-{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "name": name, "id": id, "external_id": external_id}
        return self.admin("POST", "/admin/customers", body | {"metadata": metadata or {}})

    def create_product(
        self,
        name: str = "Test pack",
        id: str | None = None,
        price_amount: int = 1900,
        currency: str = "usd",
        recurring_interval: str | None = None,
        metered_meter_ids: list[str] | None = None,
        metadata: dict | None = None,
    ) -> dict:
        """`metered_meter_ids`: meters a subscription to it resets at every cycle."""
        return self.admin(
            "POST",
            "/admin/products",
            {
                "name": name,
                "id": id,
                "price_amount": price_amount,
                "currency": currency,
                "recurring_interval": recurring_interval,
                "metered_meter_ids": metered_meter_ids or [],
                "metadata": metadata or {},
            },
        )

    def create_meter(
        self,
        name: str = "Test meter",
        event_name: str = "api_usage",
        id: str | None = None,
        property: str = "units",
    ) -> dict:
        return self.admin(
            "POST",
            "/admin/meters",
            {"name": name, "event_name": event_name, "id": id, "property": property},
        )

    def create_paid_order(
        self, customer_id: str, product_id: str, *, deliver: bool = True, **kw: Any
    ) -> dict:
        """Returns {"order": <Order JSON>, "delivery": <delivery dict> | None}."""
        return self.admin(
            "POST",
            "/admin/orders",
            {
                "customer_id": customer_id,
                "product_id": product_id,
                "deliver": deliver,
                **kw,
            },
        )

    def send_webhook(
        self,
        order_id: str,
        *,
        webhook_id: str | None = None,
        type: str = "order.paid",
        timestamp_offset_seconds: int = 0,
    ) -> dict:
        return self.admin(
            "POST",
            "/admin/webhooks/send",
            {
                "order_id": order_id,
                "webhook_id": webhook_id,
                "type": type,
                "timestamp_offset_seconds": timestamp_offset_seconds,
            },
        )

    def add_fault(
        self,
        endpoint: str,
        status: int | None,
        count: int,
        retry_after: int | None = None,
        latency_ms: int = 0,
        response_delay_ms: int = 0,
        **extra: Any,
    ) -> None:
        """extra: rate, seed, hang, hang_seconds, drop, detail (see POST /admin/faults)."""
        self.admin(
            "POST",
            "/admin/faults",
            {
                "endpoint": endpoint,
                "status": status,
                "count": count,
                "retry_after": retry_after,
                "latency_ms": latency_ms,
                "response_delay_ms": response_delay_ms,
                **extra,
            },
        )

    def clear_faults(self) -> None:
        self.admin("DELETE", "/admin/faults")

    def requests(self, endpoint: str) -> list[dict]:
        return self.admin("GET", f"/admin/requests?endpoint={endpoint}")["requests"]

    def events(self, customer_id: str | None = None) -> list[dict]:
        query = f"?customer_id={customer_id}" if customer_id else ""
        return self.admin("GET", f"/admin/events{query}")["events"]

    def credit_meter(self, customer_id: str, meter_id: str, units: int) -> dict:
        return self.admin(
            "POST",
            "/admin/customer-meters/credit",
            {"customer_id": customer_id, "meter_id": meter_id, "units": units},
        )

    def reset_meter(self, customer_id: str, meter_id: str) -> dict:
        return self.admin(
            "POST",
            "/admin/customer-meters/reset",
            {"customer_id": customer_id, "meter_id": meter_id},
        )

    # -- webhook delivery, rate limit ---------------------------------------------------
    def webhook_target(self) -> dict:
        """{id, url, configured, enabled, consecutive_failed_events}."""
        return self.admin("GET", "/admin/webhook-target")

    def webhook_mode(self, duplicate: int = 0, reorder: bool = False, delay_ms: int = 0) -> dict:
        return self.admin(
            "POST",
            "/admin/webhook-mode",
            {"duplicate": duplicate, "reorder": reorder, "delay_ms": delay_ms},
        )

    def rate_limit(self, per_minute: int | None = None) -> dict:
        """Sets the limit (and starts a fresh window) when given; returns the current state."""
        if per_minute is None:
            return self.admin("GET", "/admin/rate-limit")
        return self.admin("POST", "/admin/rate-limit", {"per_minute": per_minute})

    def deliveries(self, **params: Any) -> dict:
        """GET /v1/webhooks/deliveries as raw JSON (tests use polar-sdk for the typed view)."""
        response = httpx.get(
            f"{self.base_url}/v1/webhooks/deliveries",
            params=params,
            timeout=30.0,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return response.json()

    def redeliver(self, event_id: str) -> int:
        response = httpx.post(
            f"{self.base_url}/v1/webhooks/events/{event_id}/redeliver",
            timeout=30.0,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return response.status_code

    # -- clock, subscriptions, refunds --------------------------------------------------
    def create_plan(
        self,
        name: str = "Test plan",
        price_amount: int = 1000,
        recurring_interval: str = "month",
        recurring_interval_count: int = 1,
        metered_meter_ids: list[str] | None = None,
    ) -> dict:
        """A recurring product, optionally with metered prices on meters (reset each cycle)."""
        return self.admin(
            "POST",
            "/admin/products",
            {
                "name": name,
                "price_amount": price_amount,
                "recurring_interval": recurring_interval,
                "recurring_interval_count": recurring_interval_count,
                "metered_meter_ids": metered_meter_ids or [],
            },
        )

    def subscribe(self, customer_id: str, product_id: str, **kw: Any) -> dict:
        """Returns {"subscription", "order", "events", "deliveries"}; kw: seats, metadata."""
        return self.admin(
            "POST",
            "/admin/subscriptions",
            {"customer_id": customer_id, "product_id": product_id, **kw},
        )

    def subscription_action(self, subscription_id: str, action: str) -> dict:
        """action: renew, fail-renewal, retry-payment, cancel, uncancel, revoke, pause, resume."""
        return self.admin("POST", f"/admin/subscriptions/{subscription_id}/{action}")

    def update_subscription(
        self, subscription_id: str, product_id: str | None = None, seats: int | None = None
    ) -> dict:
        """A product change and/or new seats: {"subscription", "events", "deliveries"}."""
        body: dict[str, Any] = {}
        if product_id is not None:
            body["product_id"] = product_id
        if seats is not None:
            body["seats"] = seats
        return self.admin("POST", f"/admin/subscriptions/{subscription_id}/update", body)

    def renew(self, subscription_id: str) -> dict:
        return self.subscription_action(subscription_id, "renew")

    def clock(self) -> dict:
        return self.admin("GET", "/admin/clock")

    def clock_advance(self, seconds: float = 0, days: float = 0) -> dict:
        """Returns {"now", "mode", "renewals": [one answer per renewal, in time order]}."""
        return self.admin("POST", "/admin/clock/advance", {"seconds": seconds, "days": days})

    def clock_set(self, at: str) -> dict:
        return self.admin("POST", "/admin/clock/set", {"at": at})

    def refund(self, order_id: str, amount: int | None = None) -> dict:
        body = {} if amount is None else {"amount": amount}
        return self.admin("POST", f"/admin/orders/{order_id}/refund", body)
