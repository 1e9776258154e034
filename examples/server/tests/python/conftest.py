"""Starts vlm-server (and finds the `vlm` CLI) for the OpenAI-client tests.

The binaries come from `cargo build` in this checkout (quick when `cargo test` built
them already), or from VLM_SERVER_BIN / VLM_BIN when set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
FIXTURE = REPO / "vlm-models/tests/fixtures/qwen/qwen2_5_vl"


def _built_binaries() -> tuple[Path, Path]:
    if os.environ.get("VLM_SERVER_BIN") and os.environ.get("VLM_BIN"):
        return Path(os.environ["VLM_SERVER_BIN"]), Path(os.environ["VLM_BIN"])
    # The whole workspace's bins: the same feature set as `cargo test --workspace`, so
    # after it (scripts/test.sh) only the binaries themselves are compiled and linked;
    # `-p vlm-server -p vlm-examples` alone would rebuild vlm-core and vlm-models.
    subprocess.run(["cargo", "build", "--quiet", "--workspace", "--bins"], cwd=REPO, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )
    debug = Path(json.loads(meta.stdout)["target_directory"]) / "debug"
    return debug / "vlm-server", debug / "vlm"


@pytest.fixture(scope="session")
def binaries() -> tuple[Path, Path]:
    return _built_binaries()


@pytest.fixture(scope="session")
def vlm_cli(binaries) -> Path:
    return binaries[1]


class Server:
    def __init__(self, binary: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "VLM_API_KEY"}
        env["RUST_LOG"] = "warn"
        self.process = subprocess.Popen(
            [str(binary), "--model", str(FIXTURE / "model"), "--device", "cpu",
             "--port", str(self.port), *extra],
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.process.poll() is None, "vlm-server exited at start"
                assert time.monotonic() < deadline, "vlm-server did not listen within 30 s"
                time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def start_server(binaries):
    """start_server(*extra_args) -> Server; every server stops when the test ends."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        server = Server(binaries[0], *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
