"""Other load held on a server while a cell runs, which the measured calls must be served
through: another client's calls from its own h2load, or streams whose request never comes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_support import h2load
from bench_support.common import ROOT, say

sys.path.insert(0, str(ROOT))
from tests.raw_http2 import RawHttp2Client


def competing_load(
    address: str, load: h2load.Load, in_flight: int, workdir: Path
) -> Callable[[float], ContextManager[Any]]:
    """Another client's calls (`load` at `in_flight`, from its own h2load) for as long as a cell runs."""

    @contextmanager
    def running(seconds: float) -> Iterator[None]:
        body = workdir / "competing-body.bin"
        body.write_bytes(load.bodies[0])
        command = [
            "h2load",
            f"--data={body}",
            "-c",
            "1",
            "-t",
            "1",
            "-m",
            str(in_flight),
            f"--duration={seconds + 2:g}s",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            f"authorization: Bearer {load.token}",
            f"http://{address}{load.path}",
        ]
        popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.5)  # its calls are in flight before the measured ones start
            yield
        finally:
            output = popen.communicate()[0]
            say(f"    competing load: {h2load.summary(output)}")

    return running


def header_only_streams(address: str, connections: int, streams_each: int) -> Callable[[float], ContextManager[Any]]:
    """A client without a token that opens `streams_each` request HEADERS on each of
    `connections` connections and never sends a message, for as long as a cell runs."""

    @contextmanager
    def holding(_seconds: float) -> Iterator[None]:
        host, port = address.rsplit(":", 1)
        clients = [RawHttp2Client(host, int(port)) for _ in range(connections)]
        try:
            held = sum(len(client.open_header_only_streams(streams_each)) for client in clients)
            say(f"    holding {held} header-only streams over {connections} connections")
            yield
        finally:
            for client in clients:
                client.close()

    return holding
