"""Reads one JSON object per line from stdin and parses each as an `arcp.v1.ClientFrame` in
protobuf's canonical JSON mapping, the way grpcurl does. Prints {"frames": N} or fails naming
the line that does not fit the schema."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python"))
import arcp_stubs  # noqa: E402
from google.protobuf import json_format  # noqa: E402

pb, _ = arcp_stubs.load()
count = 0
for n, line in enumerate(sys.stdin, 1):
    if not line.strip():
        continue
    try:
        frame = json_format.Parse(line, pb.ClientFrame())
    except json_format.ParseError as e:
        raise SystemExit(f"line {n} is not an arcp.v1.ClientFrame: {e}\n{line}")
    if frame.WhichOneof("payload") is None:
        raise SystemExit(f"line {n} sets no payload: {line}")
    count += 1
print(json.dumps({"frames": count}))
