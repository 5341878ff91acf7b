"""Row 7 of arcp-bench: the reference Python ARCP runtime and its client doing row 1's
workload (one session, one agent emitting COUNT `log` events with BYTES-byte messages as fast
as the client takes them), over WebSocket on 127.0.0.1, in one process.

Prints {"frames": N, "seconds": S} for the span from the first event to the job's result.
"""

import argparse
import asyncio
import json
import time

from arcp import ClientInfo, WebSocketTransport, serve_websocket
from arcp.client import ARCPClient

from python_runtime import chatter_runtime


async def main(count, size):
    runtime = chatter_runtime()
    server = await serve_websocket(runtime.accept, host="127.0.0.1", port=0, path="/arcp")
    port = next(iter(server.sockets)).getsockname()[1]
    async with server:
        client = ARCPClient(client=ClientInfo(name="arcp-bench", version="1"), token="bench-token")
        await client.connect(await WebSocketTransport.connect(f"ws://127.0.0.1:{port}/arcp", max_size=None))
        handle = await client.submit(agent="chatter", input={"count": count, "bytes": size})
        frames, start = 0, None
        async for _ in handle.events():
            if start is None:
                start = time.perf_counter()
            frames += 1
        await handle.done
        seconds = time.perf_counter() - start
        await client.close()
    print(json.dumps({"frames": frames, "seconds": seconds}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--bytes", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.bytes))
