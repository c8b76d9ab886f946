"""`costguard proxy`: the same caps for agents in any language, through per-run keys.

An agent points its SDK's base URL at the proxy (`http://127.0.0.1:8788/openai/v1`) and uses a run key
as its API key; the proxy reserves each request's cost against every ceiling that applies before the
vendor sees it, swaps in the vendor key, and commits the usage the vendor reports.
"""

from __future__ import annotations

from costguard.proxy.app import ProxyApp

__all__ = ["ProxyApp"]
