"""The ceiling for the receiver benchmark: the same HTTP stack, doing nothing.

A raw ASGI app that reads the whole request body and answers ``204 No Content``, served by
uvicorn with exactly the settings ``factorflow serve`` uses. Whatever the receiver achieves
is compared with what this achieves on the same machine in the same run.

    python bench/bare_app.py --port 8090
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while True:  # drain the body, as the receiver must
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `factorflow serve` (see factorflow.cli.serve).
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop="auto", http="auto", lifespan="on",
        access_log=False, log_config=None, server_header=False, timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
