"""Generates the Python gRPC stubs of proto/arcp/v1/arcp.proto with grpcio-tools, so clients
always match the schema in this repository."""

import os
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "arcp", "v1")


def load():
    """Returns the `arcp_pb2` and `arcp_pb2_grpc` modules, generated into a temporary directory
    that is removed once both are imported."""
    out = tempfile.mkdtemp(prefix="arcp-stubs-")
    try:
        return _generate_and_import(out)
    finally:
        # The modules stay in sys.modules; nothing imports from the directory again.
        if out in sys.path:
            sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)


def _generate_and_import(out):
    """Compiles the schema into `out` and imports both modules from it."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # Compiled from inside arcp/v1, so the modules are top-level `arcp_pb2`: a package named
    # `arcp` would collide with the reference SDK's import name.
    status = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", "arcp.proto"]
    )
    if status != 0:
        raise SystemExit(f"protoc failed ({status}) on {PROTO_DIR}/arcp.proto")
    sys.path.insert(0, out)
    import arcp_pb2  # noqa: E402
    import arcp_pb2_grpc  # noqa: E402

    return arcp_pb2, arcp_pb2_grpc
