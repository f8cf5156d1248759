"""A gRPC client we did not write (Python grpcio) calling the demo Greeter through mesh-proxy.

Usage: python3 interop.py PROXY_ADDR AUTHORITY PROTO_DIR {kinds|spread|grpcweb}
       python3 interop.py LISTEN_ADDR REPLICA PROTO_DIR serve

With INTEROP_TLS_CA=<ca.pem> in the environment, the client speaks TLS to PROXY_ADDR,
verifying its certificate for AUTHORITY's host against that CA (an ingress).

kinds: the four RPC kinds, an error status with its message, 4 MiB messages both ways.
spread: 3000 unary calls on one channel (one HTTP/2 connection), counted per replica.
grpcweb: SayHello as gRPC-Web and gRPC-Web-text over HTTPS with Python's own http.client (no gRPC
library), and an error status read from the trailer frame.
serve: a grpcio Greeter server (SayHello only) whose replies name REPLICA; prints
"serving" once it listens, and serves until killed.

Prints a JSON report on stdout: {"checks": [...], "per_replica": {"greeter-0": 1000, ...}}.
Exits non-zero on the first failed check, naming it.
"""

import base64
import json
import os
import ssl
import struct
import sys
import tempfile
import http.client
import socket
import urllib.parse
from collections import Counter

import grpc
from grpc_tools import protoc

MAX_MESSAGE = 16 * 1024 * 1024
FOUR_MIB = 4 * 1024 * 1024
UNARY_CALLS = 3000
DEADLINE_S = 30


def load_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="mesh-interop-")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"{proto_dir}/demo.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed on {proto_dir}/demo.proto (exit {rc})")
    sys.path.insert(0, out)
    import demo_pb2
    import demo_pb2_grpc
    return demo_pb2, demo_pb2_grpc


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def main():
    addr, authority, proto_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if mode not in ("kinds", "spread", "serve", "grpcweb"):
        raise SystemExit(f"unknown mode {mode!r}: expected kinds, spread, grpcweb or serve")
    pb, rpc = load_stubs(proto_dir)
    if mode == "serve":
        serve(pb, rpc, addr, authority)
        return
    options = [
        ("grpc.default_authority", authority),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        # One connection: no client-side balancing, no subchannel pool sharing.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    checks = []
    per_replica = Counter()
    ca = os.environ.get("INTEROP_TLS_CA")
    if mode == "grpcweb":
        grpc_web(pb, addr, authority, ca, checks)
        print(json.dumps({"checks": checks, "per_replica": {}}))
        return
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        host = authority.split(":")[0]
        options.append(("grpc.ssl_target_name_override", host))
        channel = grpc.secure_channel(addr, credentials, options=options)
    else:
        channel = grpc.insecure_channel(addr, options=options)
    with channel:
        stub = rpc.GreeterStub(channel)
        if mode == "kinds":
            kinds(pb, stub, checks)
        else:
            for i in range(UNARY_CALLS):
                reply = stub.SayHello(pb.HelloRequest(name=f"n{i}"), timeout=DEADLINE_S)
                per_replica[reply.replica] += 1
            checks.append("3000-unary-one-connection")

    print(json.dumps({"checks": checks, "per_replica": dict(per_replica)}))


def grpc_web_call(pb, addr, authority, ca, request, text):
    """One gRPC-Web unary call of SayHello over HTTPS: (replies, trailers)."""
    message = request.SerializeToString()
    body = b"\x00" + struct.pack(">I", len(message)) + message
    content_type = "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
    if text:
        body = base64.b64encode(body)
    host = authority.split(":")[0]
    ip, port = addr.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)

    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        """Verifies the certificate for `host` while connecting to the ingress's address
        (what a DNS record would do)."""

        def connect(self):
            sock = socket.create_connection((ip, int(port)), self.timeout)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    conn = PinnedHTTPSConnection(host, int(port), context=context, timeout=DEADLINE_S)
    conn.request("POST", "/mesh.demo.v1.Greeter/SayHello", body=body, headers={
        "content-type": content_type,
        "x-grpc-web": "1",
        "accept": content_type,
    })
    rsp = conn.getresponse()
    check(rsp.status == 200, f"grpc-web HTTP status {rsp.status}")
    check(rsp.getheader("content-type") == content_type,
          f"response content type {rsp.getheader('content-type')!r}")
    # A trailers-only answer (an error) carries its status in the headers.
    header_trailers = {k: rsp.getheader(k) for k in ("grpc-status", "grpc-message")
                       if rsp.getheader(k) is not None}
    data = rsp.read()
    conn.close()
    if text:
        data = base64.b64decode(data)
    replies, trailers = [], dict(header_trailers)
    while data:
        flag, length = data[0], struct.unpack(">I", data[1:5])[0]
        frame, data = data[5:5 + length], data[5 + length:]
        if flag & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    k, v = line.split(":", 1)
                    trailers[k.strip().lower()] = v.strip()
        else:
            reply = pb.HelloReply()
            reply.ParseFromString(frame)
            replies.append(reply)
    return replies, trailers


def grpc_web(pb, addr, authority, ca, checks):
    replies, trailers = grpc_web_call(pb, addr, authority, ca, pb.HelloRequest(name="web"), False)
    check(len(replies) == 1 and replies[0].message == "Hello, web!",
          f"grpc-web replies {[r.message for r in replies]!r}")
    check(trailers.get("grpc-status") == "0", f"grpc-web trailers {trailers!r}")
    checks.append("grpc-web-unary")
    replies, trailers = grpc_web_call(pb, addr, authority, ca, pb.HelloRequest(name="text"), True)
    check(len(replies) == 1 and replies[0].message == "Hello, text!",
          f"grpc-web-text replies {[r.message for r in replies]!r}")
    check(trailers.get("grpc-status") == "0", f"grpc-web-text trailers {trailers!r}")
    checks.append("grpc-web-text-unary")
    replies, trailers = grpc_web_call(pb, addr, authority, ca, pb.HelloRequest(name="not-found"), False)
    check(replies == [], f"an error status came with replies {replies!r}")
    check(trailers.get("grpc-status") == "5", f"grpc-web error trailers {trailers!r}")
    check(urllib.parse.unquote(trailers.get("grpc-message", "")) == "no greeting for not-found",
          f"grpc-web error message {trailers.get('grpc-message')!r}")
    checks.append("grpc-web-error-status")


def serve(pb, rpc, listen, replica):
    from concurrent import futures

    class Greeter(rpc.GreeterServicer):
        def SayHello(self, request, context):
            return pb.HelloReply(message=f"Hello, {request.name}!", replica=replica)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_GreeterServicer_to_server(Greeter(), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def kinds(pb, stub, checks):
    reply = stub.SayHello(pb.HelloRequest(name="interop"), timeout=DEADLINE_S)
    check(reply.message == "Hello, interop!", f"unary reply {reply.message!r}")
    check(reply.replica.startswith("greeter-"), f"unary replica {reply.replica!r}")
    checks.append("unary")

    replies = list(stub.StreamGreetings(pb.HelloRequest(name="s", count=5), timeout=DEADLINE_S))
    check(len(replies) == 5, f"server streaming got {len(replies)} replies, wanted 5")
    check(replies[-1].message == "Hello, s! (5/5)", f"last streamed reply {replies[-1].message!r}")
    checks.append("server-streaming")

    names = (pb.HelloRequest(name=n) for n in ["a", "b", "c"])
    reply = stub.CollectNames(names, timeout=DEADLINE_S)
    check(reply.message == "Hello, a, b, c!", f"client streaming reply {reply.message!r}")
    checks.append("client-streaming")

    chat = list(stub.Chat(iter([pb.HelloRequest(name=n) for n in ["x", "y", "z"]]), timeout=DEADLINE_S))
    check([r.message for r in chat] == ["Hello, x!", "Hello, y!", "Hello, z!"],
          f"bidi replies {[r.message for r in chat]!r}")
    checks.append("bidi-streaming")

    try:
        stub.SayHello(pb.HelloRequest(name="not-found"), timeout=DEADLINE_S)
        check(False, "not-found call succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"status {e.code()} instead of NOT_FOUND")
        check(e.details() == "no greeting for not-found", f"message {e.details()!r}")
    checks.append("error-status-and-message")

    payload = bytes(range(256)) * (FOUR_MIB // 256)
    reply = stub.SayHello(pb.HelloRequest(name="big", payload=payload), timeout=DEADLINE_S)
    check(reply.payload == payload, f"4 MiB unary payload came back with {len(reply.payload)} bytes")
    streamed = list(stub.Chat(iter([pb.HelloRequest(name="big", payload=payload)] * 2), timeout=DEADLINE_S))
    check(all(r.payload == payload for r in streamed) and len(streamed) == 2, "4 MiB bidi payloads")
    checks.append("4MiB-messages")


if __name__ == "__main__":
    main()
