"""Polar's rate limit (429, empty body, integer retry-after) and faults on demand."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from polar.base import PolarNetworkError, PolarRateLimitError, PolarServerError
from polar.v2026_10 import PolarAsync

from tests.support.standin import StandinProcess

UNLIMITED = ["--rate-limit", "100000"]


def _http(standin: StandinProcess) -> httpx.Client:
    return httpx.Client(
        base_url=standin.base_url,
        headers={"Authorization": f"Bearer {standin.token}"},
        timeout=10.0,
    )


def test_over_the_limit_polar_answers_429_with_an_empty_body_and_integer_retry_after(
    fresh_standin,
):
    standin = fresh_standin(extra_args=["--rate-limit", "5"])
    with _http(standin) as http:
        assert [http.get("/v1/meters/").status_code for _ in range(5)] == [200] * 5
        limited = http.get("/v1/meters/")
        assert limited.status_code == 429
        assert limited.content == b""
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Only /v1 counts: the admin surface and health stay open.
        assert http.get("/admin/rate-limit").json()["per_minute"] == 5
        assert http.get("/healthz").status_code == 200
        assert http.get("/v1/customers/").status_code == 429  # one limit per organization

        assert standin.rate_limit(10)["per_minute"] == 10  # at runtime, fresh window
        assert http.get("/v1/meters/").status_code == 200


async def test_polar_sdk_sees_the_limit_as_a_rate_limit_error(fresh_standin):
    standin = fresh_standin(extra_args=["--rate-limit", "1"])
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        await polar.meters.list()
        with pytest.raises(PolarRateLimitError):
            await polar.meters.list()


def test_sandbox_preset_allows_100_requests_a_minute(fresh_standin):
    standin = fresh_standin(extra_env={"STANDIN_PRESET": "sandbox"})
    assert standin.rate_limit()["per_minute"] == 100
    with _http(standin) as http:
        codes = [http.get("/v1/meters/").status_code for _ in range(101)]
    assert codes == [200] * 100 + [429]


def test_production_preset_is_the_default_500(fresh_standin):
    assert fresh_standin().rate_limit()["per_minute"] == 500


def test_rate_faults_hit_the_given_fraction_reproducibly_until_cleared(fresh_standin):
    standin = fresh_standin(extra_args=UNLIMITED)
    standin.add_fault("meters.list", 503, 1, rate=0.3, seed=7)
    with _http(standin) as http:
        codes = [http.get("/v1/meters/").status_code for _ in range(200)]
        # Seeded: the same draws as random.Random(7), one per request on that endpoint.
        draws = random.Random(7)
        assert codes == [503 if draws.random() < 0.3 else 200 for _ in range(200)]
        assert 40 <= codes.count(503) <= 80
        assert http.get("/v1/customers/").status_code == 200  # other endpoints untouched
        standin.clear_faults()
        assert {http.get("/v1/meters/").status_code for _ in range(20)} == {200}


async def test_hang_outlasts_the_client_timeout(fresh_standin):
    standin = fresh_standin(extra_args=UNLIMITED)
    standin.add_fault("meters.list", None, 1, hang=True)
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        started = time.monotonic()
        with pytest.raises(PolarNetworkError):
            await polar.meters.list(request_timeout=1)
        assert time.monotonic() - started < 5
        assert (await polar.meters.list()).pagination.total_count >= 1  # served again


async def test_drop_closes_the_connection_without_an_answer(fresh_standin):
    standin = fresh_standin(extra_args=UNLIMITED)
    standin.add_fault("meters.list", None, 1, drop=True)
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        with pytest.raises(PolarNetworkError) as caught:
            await polar.meters.list()
        assert "disconnected" in str(caught.value).lower()
        await polar.meters.list()  # one drop only: served again


async def test_faults_armed_at_start_up_from_flags_file_and_env(fresh_standin, tmp_path):
    faults_file = tmp_path / "faults.json"
    faults_file.write_text(json.dumps([{"endpoint": "products.list", "status": 502}]))
    standin = fresh_standin(
        extra_args=[
            "--fault",
            "meters.list:status=503,count=2",
            "--faults-file",
            str(faults_file),
        ],
        extra_env={"STANDIN_FAULTS": json.dumps([{"endpoint": "customers.list", "drop": True}])},
    )
    async with PolarAsync(standin.token, base_url=standin.base_url) as polar:
        for _ in range(2):
            with pytest.raises(PolarServerError) as caught:
                await polar.meters.list()
            assert caught.value.status_code == 503
        await polar.meters.list()
        with pytest.raises(PolarServerError):
            await polar.products.list()
        with pytest.raises(PolarNetworkError):
            await polar.customers.list()
        await polar.customers.list()


def test_a_fault_answers_the_detail_it_was_given(fresh_standin):
    """A client's error handling is tried against a body that quotes personal data."""
    standin = fresh_standin(extra_args=UNLIMITED)
    detail = "customer jane.doe@example.com (Jane Doe) is not an order"
    standin.add_fault("meters.list", 500, 1, detail=detail)
    standin.add_fault("meters.list", 422, 1, detail=detail)
    with _http(standin) as http:
        server_error = http.get("/v1/meters/")
        assert server_error.status_code == 500 and server_error.json()["detail"] == detail
        rejected = http.get("/v1/meters/")
        assert rejected.status_code == 422 and rejected.json()["detail"][0]["msg"] == detail
        plain = http.get("/v1/meters/")
        assert plain.status_code == 200
