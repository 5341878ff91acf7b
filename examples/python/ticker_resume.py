"""A Python gRPC client for arcp-gateway, built from proto/arcp/v1/arcp.proto with grpcio-tools.

It opens a session, submits the built-in `ticker` agent, prints its progress, drops the
connection halfway, resumes the session with the welcome's resume token and the last
`event_seq` it processed, and prints the rest through to the result. It exits 1 if any event
was missed or repeated.

    pip install -r tests/interop/requirements.txt
    python examples/python/ticker_resume.py --target 127.0.0.1:50051 --token alice-token

Against a gateway serving TLS (`--tls-cert`), name the CA that signed its certificate with
`--cacert ca.crt`; with mutual TLS (`--tls-client-ca`) also the client's `--cert` and `--key`.

The stubs are generated at start-up by `arcp_stubs.py`, so the example always matches the
schema in this repository.
"""

import argparse
import asyncio
import json
import sys

import grpc
from google.protobuf import json_format

import arcp_stubs

pb, pb_grpc = arcp_stubs.load()


def hello(token, resume=None):
    frame = pb.ClientFrame(id="hello")
    frame.session_hello.client.name = "ticker-resume-example"
    frame.session_hello.client.version = "1.0"
    frame.session_hello.auth.scheme = "bearer"
    frame.session_hello.auth.token = token
    frame.session_hello.capabilities.features.extend(["progress"])
    if resume is not None:
        frame.session_hello.resume.CopyFrom(resume)
    return frame


async def open_session(stub, token, resume=None):
    call = stub.Session()
    await call.write(hello(token, resume))
    welcome = await call.read()
    if welcome.WhichOneof("payload") != "session_welcome":
        raise SystemExit(f"expected session_welcome, got {json_format.MessageToJson(welcome)}")
    return call, welcome


def channel_to(target, cacert=None, cert=None, key=None):
    if cacert is None:
        return grpc.aio.insecure_channel(target)
    read = lambda path: open(path, "rb").read() if path else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(cacert), private_key=read(key), certificate_chain=read(cert)
    )
    return grpc.aio.secure_channel(target, credentials)


async def run(target, token, count, drop_after, cacert=None, cert=None, key=None):
    async with channel_to(target, cacert, cert, key) as channel:
        stub = pb_grpc.ArcpStub(channel)
        call, welcome = await open_session(stub, token)
        print(f"session {welcome.session_id} opened")

        submit = pb.ClientFrame(id="submit-1")
        submit.job_submit.agent = "ticker"
        submit.job_submit.input.struct_value.update({"count": count, "interval_ms": 50})
        await call.write(submit)

        seen, job_id, last = [], None, 0
        while len(seen) < drop_after:
            frame = await call.read()
            kind = frame.WhichOneof("payload")
            seen.append(frame.event_seq)
            last = frame.event_seq
            if kind == "job_accepted":
                job_id = frame.job_accepted.job_id
                print(f"job {job_id} accepted")
            elif kind == "job_event" and frame.job_event.WhichOneof("body") == "progress":
                p = frame.job_event.progress
                print(f"progress {p.current:.0f}/{p.total:.0f} (event_seq {frame.event_seq})")

        print(f"dropping the connection after event_seq {last}")
        call.cancel()
        await asyncio.sleep(0.3)  # the job keeps running on the gateway meanwhile

        resume = pb.ResumeInfo(session_id=welcome.session_id, resume_token=welcome.session_welcome.resume_token, last_event_seq=last)
        call, welcome2 = await open_session(stub, token, resume)
        print(f"session {welcome2.session_id} resumed after event_seq {last}")
        result = None
        while result is None:
            frame = await call.read()
            seen.append(frame.event_seq)
            kind = frame.WhichOneof("payload")
            if kind == "job_event" and frame.job_event.WhichOneof("body") == "progress":
                p = frame.job_event.progress
                print(f"progress {p.current:.0f}/{p.total:.0f} (event_seq {frame.event_seq})")
            elif kind in ("job_result", "job_error") and frame.job_id == job_id:
                result = frame
        call.cancel()

    outcome = json_format.MessageToDict(result.job_result, preserving_proto_field_name=True)
    print(f"result {json.dumps(outcome.get('result'))}")
    gap_free = seen == list(range(1, seen[-1] + 1))
    summary = {
        "same_session": welcome2.session_id == welcome.session_id,
        "token_rotated": welcome2.session_welcome.resume_token != welcome.session_welcome.resume_token,
        "dropped_after": last,
        "event_seqs": seen,
        "gap_free": gap_free,
        "final_status": outcome.get("final_status"),
        "result": outcome.get("result"),
    }
    print(json.dumps(summary))
    return 0 if gap_free and summary["final_status"] == "success" else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--drop-after", type=int, default=6, help="frames to read before dropping")
    parser.add_argument("--cacert", help="PEM of the CA that signed the gateway's certificate: TLS")
    parser.add_argument("--cert", help="PEM of the client certificate, for mutual TLS")
    parser.add_argument("--key", help="PEM of the client certificate's key, for mutual TLS")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.target, args.token, args.count, args.drop_after, args.cacert, args.cert, args.key)))


if __name__ == "__main__":
    main()
