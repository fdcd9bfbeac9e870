"""A minimal, fast OpenAI-like server for client benchmarks: every completion streams 3 chunks, a usage
chunk and [DONE] at once (or answers one JSON body when not streaming). Prints `PORT <n>` when listening.

    python benchmarks/fast_server.py [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

_CHUNKS = b"".join(
    b"data: " + json.dumps({"choices": [{"index": 0, "text": f" t{i}"}]}).encode() + b"\n\n" for i in range(3)
) + b'data: {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}}\n\n'
_BODY = {"choices": [{"index": 0, "text": " t0 t1 t2"}], "usage": {"prompt_tokens": 8, "completion_tokens": 3}}


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(_BODY)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_CHUNKS + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"PORT {site._server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
