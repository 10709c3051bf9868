"""A real `python server.py` process for tests that need the whole program."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import multipart

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """`python server.py` on a free port, its log captured."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.log_path = data_dir.parent / f"server-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        environment = {
            **os.environ,
            "IMGYX_DATA_DIR": str(data_dir),
            "IMGYX_PORT": "0",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.base = self._wait_for_address()
        except BaseException:
            # A server that failed to start leaves nothing running and nothing open.
            self.process.kill()
            self.process.wait()
            self.log.close()
            raise

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(
                r"listening on (http://[\d.]+:\d+)", self.log_path.read_text()
            )
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def request(self, path: str, body: bytes | None = None, headers=None):
        status, _, answer = self.fetch(path, body, headers)
        return status, answer

    def fetch(self, path: str, body: bytes | None = None, headers=None, method=None):
        """(status, headers, body) of one request; error statuses are answers too."""
        request = urllib.request.Request(
            self.base + path, data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers, error.read()

    def upload(self, content: bytes, name: str) -> dict:
        body, headers = multipart([("file", name, content)])
        status, answer = self.request("/api/upload", body, headers)
        assert status in (200, 201), answer
        return json.loads(answer)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=15) == 0
        self.log.close()
        return self.log_path.read_text()
