"""Row 10 of arcp-bench: an ARCP agent on stdio, in plain Python, that emits row 1's workload
(`count` `log` events of `bytes`-byte messages) as fast as it can write them.

The bench runs it twice: behind the gateway as a stdio agent, with a gRPC client counting what
arrives; and alone, the bench itself speaking to its stdin and counting the lines on its stdout
(the ceiling: what the child can produce at all).
"""

import json
import sys
import uuid
from datetime import datetime, timezone


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id():
    """A UUIDv7: the envelope id ARCP peers expect."""
    ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    rand = uuid.uuid4().int
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | ((rand >> 64) & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def line(kind, payload, job_id=None):
    frame = {"arcp": "1.1", "id": new_id(), "type": kind, "payload": payload}
    if job_id is not None:
        frame["job_id"] = job_id
    return json.dumps(frame, separators=(",", ":")) + "\n"


def main():
    out = sys.stdout
    for text in sys.stdin:
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "session.hello":
            out.write(line("session.welcome", {
                "session_id": "sess_" + uuid.uuid4().hex,
                "resume_token": uuid.uuid4().hex,
                "runtime": {"name": "stdio-chatter", "version": "1.0.0"},
                "capabilities": {"encodings": ["json"], "features": []},
                "accepted_at": now(),
            }))
            out.flush()
        elif kind == "job.submit":
            data = (frame.get("payload") or {}).get("input") or {}
            count, size = int(data.get("count", 0)), int(data.get("bytes", 100))
            job_id = "job_" + uuid.uuid4().hex
            out.write(line("job.accepted", {"job_id": job_id, "agent": "chatter", "lease": {},
                                            "accepted_at": now()}, job_id))
            # One event's text, its id and time refreshed per event: building every envelope
            # from scratch would measure json.dumps rather than the hop.
            body = json.dumps({"level": "info", "message": "x" * size})
            head = '{"arcp":"1.1","type":"job.event","job_id":"' + job_id + '","id":"'
            for _ in range(count):
                out.write(head + new_id() + '","payload":{"kind":"log","ts":"' + now()
                          + '","body":' + body + "}}\n")
            out.write(line("job.result", {"final_status": "success", "result": {"count": count},
                                          "completed_at": now()}, job_id))
            out.flush()
        elif kind == "job.cancel":
            break


if __name__ == "__main__":
    main()
