"""Row 9 of arcp-bench: the reference Python ARCP runtime alone, serving WebSocket on
127.0.0.1, with row 1's agent (`chatter`: COUNT `log` events of BYTES-byte messages, as fast as
the client takes them), for the bench's own Rust WebSocket client to run row 1 against.

Prints `PORT <port>` once it listens, then serves until its stdin closes.
"""

import asyncio
import sys

from arcp import RuntimeInfo, serve_websocket
from arcp.runtime import ARCPRuntime, StaticBearerVerifier


async def chatter(inp, ctx):
    """Row 1's agent: `count` log events of `bytes`-byte messages, back to back."""
    count, size = int(inp.get("count", 0)), int(inp.get("bytes", 100))
    message = "x" * size
    for _ in range(count):
        await ctx.log("info", message)
    return {"count": count}


def chatter_runtime():
    """The reference runtime with `chatter`, accepting the bench's token."""
    runtime = ARCPRuntime(
        runtime=RuntimeInfo(name="python-reference", version="1.1.3"),
        bearer=StaticBearerVerifier({"bench-token": "bench"}),
        heartbeat_interval_sec=30,
    )
    runtime.register_agent("chatter", chatter)
    return runtime


async def main():
    runtime = chatter_runtime()
    server = await serve_websocket(
        runtime.accept, host="127.0.0.1", port=0, path="/arcp", max_size=None
    )
    port = next(iter(server.sockets)).getsockname()[1]
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    # The bench closes stdin to stop it, and kills it if that is not enough.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
