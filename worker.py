"""`python worker.py`: the worker, run from a checkout (the image runs `polar-credits worker`).

The worker itself is `polar_credits/worker.py` (installed as `polar_credits.worker`)."""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # Importing the worker takes a second or two: a stop meanwhile is remembered, not fatal.
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    from polar_credits import worker

    worker._early_stops.extend(early)
    worker.main()
