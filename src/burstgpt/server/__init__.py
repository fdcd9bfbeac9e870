"""burstgpt.server: `serve-sim`, an OpenAI-compatible server whose "GPU" is the simulator's engine.

    from burstgpt.server import ServerOptions, running_server
    with running_server(ServerOptions(setup, port=0)) as url:   # a background thread on 127.0.0.1
        ...
"""

from __future__ import annotations

from burstgpt.lazy import lazy_exports

_EXPORTS = {"ServerOptions": "app", "FaultOptions": "app", "SimServer": "app", "running_server": "app",
            "serve": "app"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
