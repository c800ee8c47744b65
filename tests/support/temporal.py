"""A Temporal dev server as a process a test may stop, freeze and restart, by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port
from tests.support.processes import stop_process
from tools.stack import resolve_program, temporal_command, temporal_healthy


class TemporalProcess:
    def __init__(self, data_dir: Path, *dynamic_config: str) -> None:
        self.db = data_dir / "temporal.db"
        self.log_path = data_dir / "temporal.log"
        self.port, self.ui_port = free_port(), free_port()
        self.dynamic_config = dynamic_config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> TemporalProcess:
        argv = temporal_command(self.db, port=self.port, ui_port=self.ui_port)
        for value in self.dynamic_config:
            argv += ["--dynamic-config-value", value]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                resolve_program(argv), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"temporal exited:\n{self.log_path.read_text()[-3000:]}")
            if temporal_healthy(self.address, os.environ):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"temporal not healthy after {timeout}s")

    def freeze(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        stop_process(process, timeout=15)
