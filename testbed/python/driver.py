#!/usr/bin/env python3
"""A netlet driver in Python, built from proto/ alone.

Its stubs are generated from proto/netlet/v1alpha1/*.proto with grpcio-tools (see
testbed/python/gen.sh). It serves Identity and Pods over a unix socket in the host's plugin
directory, keeps attachments in memory and has no data plane: it proves a third party needs
nothing but the proto to be registered by the host, receive AttachPod and pass the conformance
suite's contract checks (field errors with google.rpc.BadRequest details, idempotency,
not-found semantics, garbage collection).

Usage: driver.py --stubs DIR --socket /run/netlet/plugins/pydriver.sock [--network NAME]
"""
import argparse
import ipaddress
import os
import re
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
                role=identity_pb2.ENDPOINT_ROLE_DRIVER,
                # Present and empty: it has none of the optional features (it ignores static
                # addresses), so the host refuses requests that need one.
                features=identity_pb2.Features(supported=[]),
            )

        def Probe(self, request, context):
            return identity_pb2.ProbeResponse(ready=True)

    name_re = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    id_re = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
    mac_re = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

    def check_attach(request, context):
        """The field rules of pods.proto, each refused naming the field."""
        bad = lambda field, why: field_error(context, grpc.StatusCode.INVALID_ARGUMENT, field, why)
        if not request.HasField("sandbox"):
            bad("sandbox", "required")
        sb = request.sandbox
        if not sb.id:
            bad("sandbox.id", "required")
        if not id_re.match(sb.id):
            bad("sandbox.id", "%r is not a sandbox id" % sb.id)
        if not sb.netns_path:
            bad("sandbox.netns_path", "required")
        if not sb.netns_path.startswith("/"):
            bad("sandbox.netns_path", "%r is not absolute" % sb.netns_path)
        for i, sel in enumerate(request.networks):
            f = "networks[%d]" % i
            if not name_re.match(sel.network):
                bad(f + ".network", "%r is not a DNS-1123 label" % sel.network)
            ifname = sel.interface_name
            if ifname and (len(ifname) > 15 or "/" in ifname or ":" in ifname or " " in ifname):
                bad(f + ".interface_name", "%r is not an interface name" % ifname)
            for j, ip in enumerate(sel.ips):
                try:
                    ipaddress.ip_interface(ip)
                except ValueError:
                    bad("%s.ips[%d]" % (f, j), "%r is not an address" % ip)
            if sel.mac and not mac_re.match(sel.mac):
                bad(f + ".mac", "%r is not a MAC address" % sel.mac)
            if sel.mtu and not 68 <= sel.mtu <= 65535:
                bad(f + ".mtu", "%d is outside 68..65535" % sel.mtu)

    def pods_of(sandbox_id=None):
        """Attachments grouped per sandbox, ordered by id (ListAttachments' order)."""
        out = {}
        for (sid, _net), (sandbox, a) in sorted(attachments.items()):
            if sandbox_id is None or sid == sandbox_id:
                out.setdefault(sid, pods_pb2.PodAttachments(sandbox=sandbox)).attachments.append(a)
        return [out[k] for k in sorted(out)]

    class Pods(pods_pb2_grpc.PodsServicer):
        def AttachPod(self, request, context):
            check_attach(request, context)
            networks = list(request.networks) or [pods_pb2.NetworkSelection(network=args.network)]
            out = []
            with lock:
                for i, sel in enumerate(networks):
                    if sel.network != args.network:
                        field_error(context, grpc.StatusCode.FAILED_PRECONDITION,
                                    "networks[%d].network" % i,
                                    "network %r is not served by %s" % (sel.network, args.name),
                                    "NETWORK_NOT_SERVED")
                    key = (request.sandbox.id, sel.network)
                    if key not in attachments:
                        n = len(attachments) + 2
                        attachments[key] = (request.sandbox, pods_pb2.Attachment(
                            network=sel.network,
                            driver=args.name,
                            interface_name=sel.interface_name or ("eth0" if i == 0 else "net%d" % i),
                            mac="02:70:79:00:00:%02x" % (n & 0xFF),
                            mtu=1500,
                            ips=[types_pb2.IpConfig(address="198.19.0.%d/24" % n,
                                                    family=types_pb2.IP_FAMILY_IPV4,
                                                    gateway="198.19.0.1")],
                            default_route=sel.default_route if sel.HasField("default_route") else i == 0,
                            netns_path=request.sandbox.netns_path,
                        ))
                    out.append(attachments[key][1])
            return pods_pb2.AttachPodResponse(attachments=out)

        def DetachPod(self, request, context):
            if not request.sandbox_id:
                field_error(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id", "required")
            with lock:
                for key in [k for k in attachments if k[0] == request.sandbox_id]:
                    if not request.networks or any(n.network == key[1] for n in request.networks):
                        del attachments[key]
            return pods_pb2.DetachPodResponse()

        def PodNetworkStatus(self, request, context):
            if not request.sandbox_id:
                field_error(context, grpc.StatusCode.INVALID_ARGUMENT, "sandbox_id", "required")
            with lock:
                pods = pods_of(request.sandbox_id)
            if not pods:
                field_error(context, grpc.StatusCode.NOT_FOUND, "sandbox_id",
                            "%r is not attached" % request.sandbox_id, "SANDBOX_NOT_ATTACHED")
            return pods_pb2.PodNetworkStatusResponse(pod=pods[0])

        def ListAttachments(self, request, context):
            with lock:
                pods = [p for p in pods_of()
                        if (not request.namespace or p.sandbox.namespace == request.namespace)
                        and (not request.network
                             or any(a.network == request.network for a in p.attachments))]
            return pods_pb2.ListAttachmentsResponse(pods=pods)

        def GarbageCollect(self, request, context):
            for i, sid in enumerate(request.valid_sandbox_ids):
                if not sid:
                    field_error(context, grpc.StatusCode.INVALID_ARGUMENT,
                                "valid_sandbox_ids[%d]" % i, "empty")
            valid = set(request.valid_sandbox_ids)
            with lock:
                stale = sorted({k[0] for k in attachments if k[0] not in valid})
                for key in [k for k in attachments if k[0] in stale]:
                    del attachments[key]
            return pods_pb2.GarbageCollectResponse(removed_sandbox_ids=stale)

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
