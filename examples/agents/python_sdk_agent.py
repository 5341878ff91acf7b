#!/usr/bin/env python3
"""An ARCP agent on the reference Python SDK's runtime, served over stdio.

    pip install agentruntimecontrolprotocol==1.1.3

The gateway starts this script once per job (see python_sdk_agent.toml), or keeps it to serve
several jobs with `long_lived = true`: the SDK's
`ARCPRuntime` answers the gateway's `session.hello` and runs the submitted job; everything the
agent emits through its `JobContext` reaches the gateway's client under the gateway's own job
id. Cancellation arrives as `job.cancel` and surfaces in the agent as asyncio cancellation.

Input (all optional): {"count": 3, "interval_ms": 100, "text": "..."}.
"""

import asyncio
import logging
import sys

from arcp import RuntimeInfo, StdioTransport
from arcp.runtime import ARCPRuntime, Identity, JobContext

# stdout carries the protocol: logs go to stderr, which the gateway copies to its own log.
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


class GatewayOnly:
    """The only peer is the gateway that started this process, over its pipes: every token
    names it. (A runtime reachable over a network would verify a real token here.)"""

    async def verify(self, token: str) -> Identity:
        return Identity(principal="gateway")


async def count(input, ctx: JobContext):
    data = input if isinstance(input, dict) else {}
    n = int(data.get("count", 3))
    interval = float(data.get("interval_ms", 100)) / 1000.0
    await ctx.log("info", f"counting to {n}")
    for i in range(1, n + 1):
        await asyncio.sleep(interval)
        await ctx.progress(i, total=n)
        await ctx.log("info", f"tick {i}")
    return {"counted": n, "text": data.get("text"), "trace_id": ctx.trace_id}


async def main() -> None:
    runtime = ARCPRuntime(
        runtime=RuntimeInfo(name="python-sdk-agent", version="1.0.0"),
        bearer=GatewayOnly(),
        # One session per process, over pipes: nothing to beat or to resume.
        heartbeat_interval_sec=None,
        resume_window_sec=0,
    )
    runtime.register_agent_version("count", "1.0.0", count)
    transport = await StdioTransport.from_std_streams()
    # Returns when the gateway closes stdin, which it does once the job ended.
    await runtime.accept(transport)


if __name__ == "__main__":
    asyncio.run(main())
