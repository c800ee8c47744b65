"""The floor under webhook acknowledgement: Temporal's start_workflow alone, nothing else running.

Starts a file-backed dev server exactly as `make run` does (on free ports, in a temporary
directory), then starts workflows open loop at --rate per second with no worker, no API and
no stand-in, and prints the latency percentiles of the start call. The API's answer cannot be
faster than this, since it answers only once Temporal has durably accepted the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client

from tools.bench.pipeline import free_ports, percentile
from tools.stack import resolve_program, temporal_command


async def connect(address: str, bound: float = 60.0) -> Client:
    deadline = time.monotonic() + bound
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def measure(address: str, rate: float, count: int) -> list[float]:
    client = await connect(address)
    latencies: list[float] = []

    async def start(at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await client.start_workflow("Floor", id=str(uuid.uuid4()), task_queue="floor-no-worker")
        latencies.append(time.monotonic() - at)

    t0 = time.monotonic() + 0.5
    await asyncio.gather(*(start(t0 + i / rate) for i in range(count)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.start_floor", description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="starts per second (20)")
    parser.add_argument("--count", type=int, default=1200, help="starts in all (1200)")
    args = parser.parse_args()
    port, ui_port = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="polar-credits-floor-") as data:
        argv = resolve_program(
            temporal_command(Path(data) / "temporal.db", port=port, ui_port=ui_port)
        )
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            latencies = asyncio.run(measure(f"127.0.0.1:{port}", args.rate, args.count))
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"start_workflow on an idle file-backed dev server, {args.count} starts open loop "
        f"at {args.rate:g}/s, {os.cpu_count()} CPUs:"
    )
    p50, p90, p99 = (percentile(ms, pct) for pct in (50, 90, 99))
    print(f"  p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
