#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, kube-proxy, kube-controller-manager, kube-scheduler and the
# kubelet (k8s.io/kubernetes, pinned in apiserver/go.mod) and etcd (go.etcd.io/etcd/server/v3,
# pinned in etcd/go.mod) from their Go modules, once: the binaries are cached in
# $NETLET_K8S_BIN (default /var/tmp/netlet-k8s-bin), outside the clone, and rebuilt only when a
# go.mod or go.sum here changes. About 6 minutes on 2 cores the first time. Beside them, the
# Gateway API's CRDs. `build.sh --e2e` builds the upstream e2e suite (e2e.test, same version)
# too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${NETLET_K8S_BIN:-/var/tmp/netlet-k8s-bin}"
mkdir -p "$out"
# The Gateway API's CRDs for the kinds that claim hostnames, from the module's own
# config/crd/standard (fetched through the Go module proxy), once per version.
gateway_api=v1.6.3
if [ "$(cat "$out/gateway-api-crds/VERSION" 2>/dev/null)" != "$gateway_api" ]; then
  dir=$(cd "$here/apiserver" && go mod download -json "sigs.k8s.io/gateway-api@$gateway_api" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  rm -rf "$out/gateway-api-crds"
  mkdir -p "$out/gateway-api-crds"
  for k in gateways httproutes grpcroutes tlsroutes; do
    cp "$dir/config/crd/standard/gateway.networking.k8s.io_$k.yaml" "$out/gateway-api-crds/"
  done
  echo "$gateway_api" > "$out/gateway-api-crds/VERSION"
fi
stamp=$(cat "$0" "$here"/apiserver/tools.go "$here"/apiserver/go.mod "$here"/apiserver/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum "$here"/etcd/main.go | sha256sum | cut -d' ' -f1)
# The release's version, as its own build stamps it (the kubelet reports it on its Node; the
# e2e suite compares it with the API server's).
k8s=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/apiserver/go.mod")
minor=$(echo "$k8s" | cut -d. -f2)
ldflags="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
cmds=(kube-apiserver kubectl kube-proxy kube-controller-manager kube-scheduler kubelet)
if [ "$(cat "$out/STAMP" 2>/dev/null)" != "$stamp" ]; then
  rm -f "$out/STAMP" "$out/e2e.test"
  for cmd in "${cmds[@]}"; do
    (cd "$here/apiserver" && go build -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  (cd "$here/etcd" && go build -o "$out/etcd" .)
  echo "$stamp" > "$out/STAMP"
fi
if [ "${1:-}" = --e2e ] && [ ! -x "$out/e2e.test" ]; then
  (cd "$here/apiserver" && go test -c -ldflags "$ldflags" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e)
fi
