#!/usr/bin/env python3
"""An ARCP runtime on the reference Python SDK, served over WebSocket, for a gateway to front
as an `upstream` backend (see python_upstream.toml).

    pip install agentruntimecontrolprotocol==1.1.3
    RESEARCH_TOKEN=upstream-secret python3 python_upstream.py --port 8765

The gateway opens one session here per job, presenting the token of its agents file, and maps
what the agent emits into its own client's session. Prints `PORT <port>` once it listens, and
serves until stdin closes (or forever with --forever).

Agents:
- `count` (input, all optional: {"count": 3, "interval_ms": 100}): `progress` and `log`
  events, then {"counted": n, "trace_id": ...};
- `wait` : runs until cancelled, reporting each cancellation it saw in a `log` line on
  stderr (`cancelled <job_id>`), which a test can wait for.
"""

import argparse
import asyncio
import logging
import os
import sys

from arcp import RuntimeInfo, serve_websocket
from arcp.runtime import ARCPRuntime, JobContext, StaticBearerVerifier

logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


async def count(input, ctx: JobContext):
    data = input if isinstance(input, dict) else {}
    n = int(data.get("count", 3))
    interval = float(data.get("interval_ms", 100)) / 1000.0
    await ctx.log("info", f"counting to {n}")
    for i in range(1, n + 1):
        await asyncio.sleep(interval)
        await ctx.progress(i, total=n)
    return {"counted": n, "trace_id": ctx.trace_id}


async def wait(input, ctx: JobContext):
    await ctx.log("info", "waiting to be cancelled")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        print(f"cancelled {ctx.job_id}", file=sys.stderr, flush=True)
        raise


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--forever", action="store_true")
    args = parser.parse_args()
    token = os.environ.get("RESEARCH_TOKEN", "upstream-secret")
    runtime = ARCPRuntime(
        runtime=RuntimeInfo(name="python-upstream", version="1.0.0"),
        bearer=StaticBearerVerifier({token: "gateway"}),
        heartbeat_interval_sec=None,
    )
    runtime.register_agent_version("count", "1.0.0", count)
    runtime.register_agent_version("wait", "1.0.0", wait)
    server = await serve_websocket(runtime.accept, host="127.0.0.1", port=args.port, path="/arcp")
    port = next(iter(server.sockets)).getsockname()[1]
    print(f"PORT {port}", flush=True)
    if args.forever:
        await asyncio.Event().wait()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
