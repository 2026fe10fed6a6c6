#!/usr/bin/env python3
"""A netlet driver in Python, built from proto/ alone.

Its stubs are generated from proto/netlet/v1alpha1/*.proto with grpcio-tools (see
testbed/python/gen.sh). It serves Identity and Pods over a unix socket in the host's plugin
directory, keeps attachments in memory and has no data plane: it proves a third party needs
nothing but the proto to be registered by the host and receive AttachPod.

Usage: driver.py --stubs DIR --socket /run/netlet/plugins/pydriver.sock [--network NAME]
"""
import argparse
import os
import signal
import sys
import threading
from concurrent import futures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stubs", required=True, help="directory with generated *_pb2*.py")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--network", default="default")
    ap.add_argument("--name", default="pydriver")
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)

    import grpc
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status
    from netlet.v1alpha1 import identity_pb2, identity_pb2_grpc, pods_pb2, pods_pb2_grpc, types_pb2

    def field_error(context, code, field, why, reason="INVALID_FIELD"):
        """Aborts the call the way the contract asks (types.proto, "Errors"): the message
        "<field>: <why>", and in the details a google.rpc.BadRequest naming the field and a
        google.rpc.ErrorInfo with the reason in domain netlet.io."""
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=why)])
        info = error_details_pb2.ErrorInfo(reason=reason, domain="netlet.io",
                                           metadata={"field": field})
        details = []
        for d in (bad, info):
            a = any_pb2.Any()
            a.Pack(d)
            details.append(a)
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code.value[0], message="%s: %s" % (field, why), details=details)))

    attachments = {}
    lock = threading.Lock()

    class Identity(identity_pb2_grpc.IdentityServicer):
        def GetInfo(self, request, context):
            return identity_pb2.GetInfoResponse(
                name=args.name,
                vendor_version="0.1.0-python",
                api_versions=["netlet.v1alpha1"],
                capabilities=[identity_pb2.CAPABILITY_PODS],
                services=["netlet.v1alpha1.Identity", "netlet.v1alpha1.Pods"],
                networks=[args.network],
            )

        def Probe(self, request, context):
            return identity_pb2.ProbeResponse(ready=True)

    class Pods(pods_pb2_grpc.PodsServicer):
        def AttachPod(self, request, context):
            if not request.HasField("sandbox"):
                field_error(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox", "required")
            if not request.sandbox.id:
                field_error(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox.id", "required")
            out = []
            with lock:
                for i, sel in enumerate(request.networks):
                    n = len(attachments) + 2
                    a = pods_pb2.Attachment(
                        network=sel.network,
                        driver=args.name,
                        interface_name=sel.interface_name or "eth0",
                        mac="02:70:79:00:00:%02x" % (n & 0xFF),
                        mtu=1500,
                        ips=[types_pb2.IpConfig(address="198.19.0.%d/24" % n,
                                                family=types_pb2.IP_FAMILY_IPV4,
                                                gateway="198.19.0.1")],
                        default_route=sel.default_route if sel.HasField("default_route") else i == 0,
                    )
                    key = (request.sandbox.id, sel.network)
                    a = attachments.setdefault(key, a)
                    out.append(a)
            return pods_pb2.AttachPodResponse(attachments=out)

        def DetachPod(self, request, context):
            if not request.sandbox_id:
                field_error(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id", "required")
            with lock:
                for key in [k for k in attachments if k[0] == request.sandbox_id]:
                    if not request.networks or any(n.network == key[1] for n in request.networks):
                        del attachments[key]
            return pods_pb2.DetachPodResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    identity_pb2_grpc.add_IdentityServicer_to_server(Identity(), server)
    pods_pb2_grpc.add_PodsServicer_to_server(Pods(), server)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server.add_insecure_port("unix:" + args.socket)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    if os.path.exists(args.socket):
        os.unlink(args.socket)


if __name__ == "__main__":
    main()
