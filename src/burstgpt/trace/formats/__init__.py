"""Built-in trace formats, one module each; importing this package registers them (in detection order)."""

from burstgpt.trace.formats import burstgpt, azure, mooncake, mapped  # noqa: F401  (registration order)
