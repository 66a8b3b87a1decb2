"""``python -m bench startup``'s measuring code, on one start of each server: what it reads, not how fast."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.startup import ALLOWED_CALLS, BASELINE, GATE, listening, markdown, run

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)


def test_a_socket_counts_as_listening_once_listen_was_called_and_not_when_only_bound(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        assert not listening(path)
        sock.listen(1)
        assert listening(path)
        assert not listening(str(tmp_path / "other.sock"))


def test_each_start_is_read_at_listening_then_first_instance_then_first_request() -> None:
    rows = run((1, 2), repeat=1, instructions=False)
    assert [(row.server, row.processes) for row in rows] == [(BASELINE, 1), (GATE, 1), (GATE, 2)]
    for row in rows:
        (start,) = row.starts
        assert start.calls == ALLOWED_CALLS  # an allowed request, as Kong plays it
        assert 0 < start.listening_s <= start.instance_s <= start.first_request_s
        assert 0 <= start.cpu_listening_s <= start.cpu_first_request_s
        assert start.instructions_first_request is None  # counted only under callgrind
    text = markdown(rows)
    assert text.splitlines()[2].startswith(f"| {BASELINE} | 1 | ")
    assert "| credit-gate | 2 | " in text and "instructions" not in text
