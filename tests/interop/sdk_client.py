"""Drives arcp-gateway over WebSocket with the reference Python SDK's client.

Usage: sdk_client.py --url ws://HOST:PORT/arcp --token TOKEN SCENARIO

Each scenario prints one JSON object describing what the client observed and exits 0, or
raises (exit 1) with a message. tests/interop.rs runs every scenario against a real gateway.
"""

import argparse
import asyncio
import json
import sys

from arcp import ClientInfo, ListJobsFilter, SessionResume, WebSocketTransport
from arcp.client import ARCPClient

TIMEOUT = 20.0


class Recording:
    """A transport that remembers every frame it receives, so a test can check `event_seq`
    continuity even for frames the SDK itself does not surface (replays after a resume)."""

    def __init__(self, inner):
        self.inner = inner
        self.received = []

    async def send(self, env):
        await self.inner.send(env)

    async def recv(self):
        env = await self.inner.recv()
        self.received.append(env)
        return env

    async def close(self):
        await self.inner.close()

    @property
    def is_closed(self):
        return self.inner.is_closed


def client(name, token):
    return ARCPClient(client=ClientInfo(name=name, version="1.0"), token=token)


async def connect(url, name, token):
    c = client(name, token)
    transport = Recording(await WebSocketTransport.connect(url))
    welcome = await asyncio.wait_for(c.connect(transport), TIMEOUT)
    return c, transport, welcome


async def handshake(url, token):
    c, _, welcome = await connect(url, "interop-handshake", token)
    out = {
        "session_id": welcome.session_id,
        "resume_token_present": bool(welcome.resume_token),
        "runtime": welcome.runtime.name,
        "offered": list(welcome.capabilities.features),
        "negotiated": sorted(c.negotiated_features),
        "agents": sorted(a.name if hasattr(a, "name") else str(a) for a in welcome.capabilities.agents),
    }
    await asyncio.wait_for(c.close(), TIMEOUT)
    return out


async def stream(url, token):
    c, _, _ = await connect(url, "interop-stream", token)
    handle = await c.submit(agent="ticker", input={"count": 5, "interval_ms": 0})
    progress = []
    async for event in handle.events():
        if event["kind"] == "progress":
            progress.append(event["body"]["current"])
    result = await asyncio.wait_for(handle.done, TIMEOUT)
    await asyncio.wait_for(c.close(), TIMEOUT)
    return {"job_id": handle.job_id, "progress": progress, "final_status": result.final_status, "result": result.result}


async def cancel(url, token):
    # §7.4 ends a cancelled job with `job.cancelled` and `job.error` (final_status
    # "cancelled"), which this SDK cannot parse (it expects `job.result`), so a second client
    # of the same principal observes the outcome through `session.list_jobs`.
    c, _, _ = await connect(url, "interop-cancel", token)
    handle = await c.submit(agent="ticker", input={"count": 1000, "interval_ms": 20})
    async for _ in handle.events():
        break
    await c.cancel_job(handle.job_id, reason="interop test")
    observer, _, _ = await connect(url, "interop-cancel-observer", token)
    status = None
    for _ in range(200):
        jobs = await asyncio.wait_for(observer.list_jobs(limit=100), TIMEOUT)
        status = next((j.status for j in jobs.jobs if j.job_id == handle.job_id), None)
        if status == "cancelled":
            break
        await asyncio.sleep(0.05)
    await asyncio.wait_for(observer.close(), TIMEOUT)
    return {"job_id": handle.job_id, "status": status}


async def list_jobs(url, token):
    c, _, _ = await connect(url, "interop-list", token)
    ids = []
    for n in range(3):
        handle = await c.submit(agent="echo", input={"n": n})
        await asyncio.wait_for(handle.done, TIMEOUT)
        ids.append(handle.job_id)
    everything = await asyncio.wait_for(c.list_jobs(limit=100), TIMEOUT)
    page = await asyncio.wait_for(c.list_jobs(filter=ListJobsFilter(status=("success",)), limit=2), TIMEOUT)
    await asyncio.wait_for(c.close(), TIMEOUT)
    return {
        "submitted": ids,
        "listed": [j.job_id for j in everything.jobs],
        "statuses": [j.status for j in everything.jobs],
        "page": [j.job_id for j in page.jobs],
        "next_cursor": bool(page.next_cursor),
    }


async def subscribe(url, token):
    owner, _, _ = await connect(url, "interop-owner", token)
    handle = await owner.submit(agent="ticker", input={"count": 8, "interval_ms": 100})
    watcher, _, _ = await connect(url, "interop-watcher", token)
    sub = await asyncio.wait_for(watcher.subscribe(handle.job_id, history=False), TIMEOUT)
    seen = []
    async for event in sub.handle.events():
        if event["kind"] == "progress":
            seen.append(event["body"]["current"])
    result = await asyncio.wait_for(sub.handle.done, TIMEOUT)
    await asyncio.wait_for(owner.close(), TIMEOUT)
    await asyncio.wait_for(watcher.close(), TIMEOUT)
    return {"job_id": handle.job_id, "subscribed_job": sub.job_id, "progress": seen, "final_status": result.final_status}


async def resume(url, token):
    first, transport, welcome = await connect(url, "interop-resume-1", token)
    handle = await first.submit(agent="ticker", input={"count": 30, "interval_ms": 20})
    async for _ in handle.events():
        if first.latest_event_seq >= 5:
            break
    last = first.latest_event_seq
    before = [env.get("event_seq") for env in transport.received if env.get("event_seq")]
    await transport.close()  # a dropped connection: no session.bye
    await asyncio.sleep(0.3)  # the job keeps emitting while nobody listens

    second = client("interop-resume-2", token)
    transport2 = Recording(await WebSocketTransport.connect(url))
    welcome2 = await asyncio.wait_for(
        second.resume(
            transport2,
            resume=SessionResume(session_id=welcome.session_id, resume_token=welcome.resume_token, last_event_seq=last),
        ),
        TIMEOUT,
    )
    # The resumed client has no handle for the earlier job, so it reads the replayed and live
    # frames off the transport until the job's terminal frame.
    for _ in range(int(TIMEOUT / 0.05)):
        if any(env.get("type") == "job.result" and env.get("job_id") == handle.job_id for env in transport2.received):
            break
        await asyncio.sleep(0.05)
    after = [env.get("event_seq") for env in transport2.received if env.get("event_seq")]
    await asyncio.wait_for(second.close(), TIMEOUT)
    return {
        "same_session": welcome2.session_id == welcome.session_id,
        "token_rotated": welcome2.resume_token != welcome.resume_token,
        "last_before_drop": last,
        "seqs": [s for s in before if s <= last] + after,
        "finished": any(env.get("type") == "job.result" for env in transport2.received),
    }


SCENARIOS = {
    "handshake": handshake,
    "stream": stream,
    "cancel": cancel,
    "list_jobs": list_jobs,
    "subscribe": subscribe,
    "resume": resume,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    out = asyncio.run(asyncio.wait_for(SCENARIOS[args.scenario](args.url, args.token), 60))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
