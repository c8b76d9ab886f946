"""An operator's change with the store down: said plainly, exit 1, and no store_error alert from the CLI."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from costguard.cli import main
from receivers import Receiver


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Receiver:
    server = Receiver()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["killswitch", "activate", "--reason", "incident"], "the kill switch for everything was NOT activated"),
        (["killswitch", "deactivate", "--reason", "over"], "the kill switch for everything was NOT deactivated"),
        (["limits", "set", "feature=chat", "--usd", "2", "--reason", "x"], "limit of feature=chat was NOT set"),
        (["limits", "clear", "feature=chat", "--reason", "x"], "limit of feature=chat was NOT cleared"),
    ],
    ids=["activate", "deactivate", "limits-set", "limits-clear"],
)
def test_a_change_with_the_store_down_says_it_did_not_happen_and_alerts_no_one(
    tmp_path: Path, receiver: Receiver, args: list[str], said: str
) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(
        f"store: redis://127.0.0.1:{_closed_port()}/0\n"
        "store_deadline_ms: 300\n"
        "features:\n  chat:\n    daily_usd: 1\n"
        f"notifiers:\n  - webhook: {{url: '{receiver.url}'}}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, [*args, "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert said in result.output and "nothing was changed" in result.output
    assert receiver.requests == []  # the CLI closed its guard (alerts flushed): no store_error was sent
