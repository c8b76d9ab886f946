"""`costguard.yaml` → validated models → `GuardSettings`; every error names the file, the key path and what
was expected.

The low layer of the config: it knows nothing of the `Guard` and never imports `costguard.guard` or
`costguard.config`. `Guard.from_yaml` builds from `load_settings(path)`; the public `costguard.config`
adds `Config.build()` on top.

- `values`: scalar validators (USD, counts, ratios, durations, prices, URLs);
- `schema`: the sections (limits, features, ceilings, fallbacks, pricing, notifiers, kill switch, admin);
- `document`: the whole file, its ceilings and settings, parsing and loading.
"""

from __future__ import annotations

from costguard._config.document import ConfigDocument, load, load_settings, parse, read

__all__ = ["ConfigDocument", "load", "load_settings", "parse", "read"]
