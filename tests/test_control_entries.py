"""Control entries across versions: a fleet upgrading one process at a time keeps reading the control state."""

from __future__ import annotations

from typing import Any

from costguard.stores.base import Control, KillSwitchState, RunKeyState, killswitch_entry, run_key_entry

KEY = RunKeyState("k1", "ab" * 32, (("run", "r-42"),), ("openai",), (("total_usd", 1.5),), 1.0, None)
SWITCH = KillSwitchState((("feature", "f"),), "incident", "ops", 1.0)


def earlier_reader(entries: list[tuple[str, dict[str, Any]]]) -> int:
    """What a version before run keys did with each entry: its scope first, whatever its kind."""
    seen = 0
    for _kind, data in entries:
        tuple((str(a), str(b)) for a, b in data["scope"])
        seen += 1
    return seen


def test_an_earlier_version_still_reads_the_control_state_once_a_key_is_issued() -> None:
    entries = [("killswitch", killswitch_entry(SWITCH)), ("key", run_key_entry(KEY))]
    assert earlier_reader(entries) == 2  # no KeyError: a key entry carries an empty scope
    control = Control.from_entries(entries)
    assert control.keys == (KEY,) and control.killswitches == (SWITCH,)


def test_an_entry_of_a_later_version_is_skipped() -> None:
    control = Control.from_entries([("killswitch", killswitch_entry(SWITCH)), ("quota", {"whatever": 1})])
    assert control.killswitches == (SWITCH,) and control.overrides == ()
