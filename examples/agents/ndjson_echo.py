#!/usr/bin/env python3
"""An ARCP agent in plain Python, no dependencies: NDJSON envelopes written by hand.

The gateway starts this script once per job (see ndjson_echo.toml) and speaks ARCP v1.1 to
it over stdin/stdout, one JSON envelope per line:

  gateway -> session.hello     agent -> session.welcome
  gateway -> job.submit        agent -> job.accepted, job.event..., job.result
  gateway -> job.cancel        agent -> job.error CANCELLED (and exits)

Input (all optional): {"text": "...", "count": 3, "interval_ms": 100}. The agent emits a
`status` naming its pid, then `count` rounds of a `log` and a `progress` event, `interval_ms`
apart, and returns {"echo": text, "count": count}. Anything for humans goes to stderr, which
the gateway copies to its log with the job id.
"""

import json
import os
import sys
import threading
import uuid
from datetime import datetime, timezone

write_lock = threading.Lock()
cancelled = threading.Event()


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id():
    """A UUIDv7 (time-ordered), the envelope id ARCP peers expect."""
    ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    rand = uuid.uuid4().int
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 64) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def send(kind, payload, job_id=None):
    frame = {"arcp": "1.1", "id": new_id(), "type": kind, "payload": payload}
    if job_id is not None:
        frame["job_id"] = job_id
    with write_lock:
        sys.stdout.write(json.dumps(frame, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def event(job_id, kind, body):
    send("job.event", {"kind": kind, "ts": now(), "body": body}, job_id)


def run_job(job_id, payload):
    data = payload.get("input") or {}
    if not isinstance(data, dict):
        data = {"text": data}
    text = data.get("text", "")
    count = int(data.get("count", 3))
    interval = float(data.get("interval_ms", 100)) / 1000.0
    event(job_id, "status", {"phase": "running", "message": f"pid {os.getpid()}"})
    for i in range(1, count + 1):
        # Event.wait doubles as an interruptible sleep: a cancel ends the job at once.
        if cancelled.wait(interval):
            send(
                "job.error",
                {
                    "final_status": "cancelled",
                    "code": "CANCELLED",
                    "message": "cancelled on request",
                    "retryable": False,
                    "completed_at": now(),
                },
                job_id,
            )
            return
        event(job_id, "log", {"level": "info", "message": f"echo {i}/{count}: {text}"})
        event(job_id, "progress", {"current": i, "total": count})
    send(
        "job.result",
        {"final_status": "success", "result": {"echo": text, "count": count}, "completed_at": now()},
        job_id,
    )


def main():
    worker = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        frame = json.loads(line)
        kind = frame.get("type")
        if kind == "session.hello":
            send(
                "session.welcome",
                {
                    "session_id": "sess_" + uuid.uuid4().hex,
                    "resume_token": uuid.uuid4().hex,
                    "resume_window_sec": 0,
                    "runtime": {"name": "ndjson-echo", "version": "1.0.0"},
                    "capabilities": {
                        "encodings": ["json"],
                        "features": ["progress"],
                        "agents": [{"name": "echo", "versions": ["1.0.0"], "default": "1.0.0"}],
                    },
                    "accepted_at": now(),
                },
            )
        elif kind == "job.submit" and worker is None:
            job_id = "job_" + uuid.uuid4().hex
            payload = frame.get("payload") or {}
            send(
                "job.accepted",
                {
                    "job_id": job_id,
                    "agent": payload.get("agent"),
                    "lease": payload.get("lease_request") or {},
                    "accepted_at": now(),
                },
                job_id,
            )
            trace = frame.get("trace_id")
            print(f"ndjson_echo: job {job_id} trace {trace}", file=sys.stderr, flush=True)
            worker = threading.Thread(target=run_job, args=(job_id, payload))
            worker.start()
        elif kind == "job.cancel":
            print("ndjson_echo: cancel requested", file=sys.stderr, flush=True)
            break
    # A cancel, or the end of stdin (the gateway is done with this session): the job, if it
    # still runs, ends as cancelled, and the process exits once its last frame is out.
    cancelled.set()
    if worker is not None:
        worker.join()


if __name__ == "__main__":
    main()
