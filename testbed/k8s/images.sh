#!/usr/bin/env bash
# The container images a cluster on this machine needs, built from source (no registry is
# reachable), as OCI archives for `ctr -n k8s.io images import`, under the names the kubelet
# and the upstream e2e suites ask for:
#   registry.k8s.io/pause:3.10.1                       testbed/cri/pause
#   registry.k8s.io/e2e-test-images/agnhost:2.56       k8s.io/kubernetes/test/images/agnhost (the
#       version pinned in apiserver/go.mod), with what its Dockerfile adds from Alpine taken from
#       this machine instead: sh and the small tools from busybox, curl, dig, nslookup, host,
#       ip, ss, getent, nc (netcat-openbsd), bash
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-1   busybox
#   registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7  the DNS tests' resolver tools (dig,
#       getent with this machine's glibc resolver) with busybox's sh
#
#   testbed/k8s/images.sh OUT_DIR
#
# Built once into $NETLET_K8S_BIN/images (rebuilt when this script or the pinned module
# changes) and copied to OUT_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: images.sh OUT_DIR}
bin=${NETLET_K8S_BIN:-/var/tmp/netlet-k8s-bin}
cache=$bin/images
stamp=$(cat "$0" "$here/apiserver/go.sum" "$root/testbed/cri/pause/"*.go "$root/deploy/oci_image.py" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$cache/STAMP" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$cache"
  mkdir -p "$cache"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # A binary of this machine and the libraries it links, at the same paths under $1.
  with_libs() {
    local rootfs=$1 b=$2 to=${3:-$2}
    mkdir -p "$rootfs$(dirname "$to")"
    cp -L "$b" "$rootfs$to"
    ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  }
  busybox_into() {
    local rootfs=$1 a
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
    cp /bin/busybox "$rootfs/bin/busybox"
    for a in $(/bin/busybox --list); do
      [ -e "$rootfs/bin/$a" ] || ln -s busybox "$rootfs/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
    mkdir -p "$rootfs/root"
  }

  (cd "$root/testbed/cri" && CGO_ENABLED=0 go build -o "$work/pause" ./pause)
  python3 "$root/deploy/oci_image.py" "$work/pause" registry.k8s.io/pause:3.10.1 "$cache/pause.tar"

  mkdir -p "$work/busybox"
  busybox_into "$work/busybox"
  python3 "$root/deploy/oci_image.py" --gzip "$work/busybox" \
    registry.k8s.io/e2e-test-images/busybox:1.37.0-1 "$cache/busybox.tar" /bin/sh --env PATH=/bin

  a=$work/agnhost
  busybox_into "$a"
  (cd "$here/apiserver" && CGO_ENABLED=0 go build -o "$a/agnhost" k8s.io/kubernetes/test/images/agnhost)
  ln -s agnhost "$a/agnhost-2"
  # porter's TLS certificate and key, at / as its Dockerfile adds them.
  src=$(cd "$here/apiserver" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost
  cp "$src/porter/localhost.crt" "$src/porter/localhost.key" "$a/"
  # The user and group the SupplementalGroups test expects in the image.
  echo "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh" >>"$a/etc/passwd"
  echo "group-defined-in-image:x:50000:user-defined-in-image" >>"$a/etc/group"
  mkdir -p "$a/uploads"
  # As the upstream image's Dockerfile adds from Alpine: bind-tools, curl, netcat-openbsd,
  # iproute2 and bash (the suites run `nc -v -t -w 2`, `dig`, `getent hosts`, `ss`).
  for b in /usr/bin/curl /usr/bin/dig /usr/bin/nslookup /usr/bin/host /usr/sbin/ip /usr/bin/ss \
    /usr/bin/getent /usr/bin/nc.openbsd:/usr/bin/nc /bin/bash; do
    to=/usr/bin/$(basename "${b#*:}")
    with_libs "$a" "${b%%:*}" "$to"
    rm -f "$a/bin/$(basename "$to")"
  done
  # sh is bash: Debian's busybox shell runs its own applets (a bare nc without -u) before the
  # real tools on PATH, where Alpine's, the upstream image's, does not.
  ln -sf /usr/bin/bash "$a/bin/sh"
  # curl's and dig's certificates and name service configuration.
  mkdir -p "$a/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$a/etc/ssl/certs/" 2>/dev/null || true
  echo "hosts: files dns" >"$a/etc/nsswitch.conf"
  python3 "$root/deploy/oci_image.py" --gzip "$a" registry.k8s.io/e2e-test-images/agnhost:2.56 \
    "$cache/agnhost.tar" /agnhost --cmd pause --env PATH=/usr/bin:/bin
  j=$work/jessie
  busybox_into "$j"
  for b in /usr/bin/dig /usr/bin/getent /usr/bin/nslookup /usr/bin/host; do
    [ -x "$b" ] || continue
    with_libs "$j" "$b"
    rm -f "$j/bin/$(basename "$b")"
  done
  with_libs "$j" /bin/bash /usr/bin/bash
  ln -sf /usr/bin/bash "$j/bin/sh"
  echo "hosts: files dns" >"$j/etc/nsswitch.conf"
  python3 "$root/deploy/oci_image.py" --gzip "$j" registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7 \
    "$cache/jessie-dnsutils.tar" /bin/sh --env PATH=/usr/bin:/bin
  echo "$stamp" >"$cache/STAMP"
fi
mkdir -p "$out"
cp "$cache"/*.tar "$out/"
