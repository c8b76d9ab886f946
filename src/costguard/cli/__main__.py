"""`python -m costguard.cli`: the `costguard` command."""

from __future__ import annotations

from costguard.cli import main

if __name__ == "__main__":
    main()
