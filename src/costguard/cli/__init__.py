"""The `costguard` command line: check a config, show spend, change limits, flip kill switches, read the
audit log, serve the admin API or MCP, run the demo.

This module holds the click group, `main` (the `costguard` console script); each command lives in a
module of this package and uses only the public `Guard` API.
"""

from __future__ import annotations

import click

from costguard.cli import audit, check, demo, keys, killswitch, limits, proxy, serve, status

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="costguard-ai", prog_name="costguard")
def main() -> None:
    """costguard: cost ceilings in front of every paid call."""


main.add_command(check.check_config)
main.add_command(status.status)
main.add_command(status.forecast)
main.add_command(limits.limits)
main.add_command(killswitch.killswitch)
main.add_command(audit.audit)
main.add_command(serve.serve)
main.add_command(serve.mcp_command)
main.add_command(demo.demo)
main.add_command(keys.keys)
main.add_command(proxy.proxy)
