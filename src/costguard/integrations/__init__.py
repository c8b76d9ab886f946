"""Vendor client wrappers: every completion made through the wrapped client is guarded.

```python
from openai import OpenAI
from costguard.integrations import openai as cg_openai

client = cg_openai.guard(OpenAI(), "support_agent")
client.chat.completions.create(model="gpt-4o-mini", messages=[...], max_tokens=300)
```

`costguard.integrations.openai.guard` and `costguard.integrations.anthropic.guard`; neither imports
the vendor SDK, so importing costguard never needs it.
"""

from __future__ import annotations

__all__: list[str] = []
