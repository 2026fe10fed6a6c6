#!/usr/bin/env bash
# Builds the image the DaemonSet runs, netlet:<workspace version>, from this repository's
# binaries: netlet, netletctl, netlet-bridge, netlet-nft, netlet-devices and netlet-cni in
# /usr/local/bin, the shared libraries they link, and busybox for the init container's shell.
# The result is an OCI archive for `ctr -n k8s.io images import` on each node: no registry, no
# container daemon.
#
#   deploy/build-image.sh [--debug] [OUT_DIR]    (default OUT_DIR: $CARGO_TARGET_DIR/image)
#
# --debug packs the debug binaries already built (the tests use it); otherwise a release build
# runs first. Prints the archive's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
if [ "${1:-}" = --debug ]; then
  profile=debug
  shift
fi
target=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$target/image}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
bins=(netlet netletctl netlet-bridge netlet-nft netlet-devices netlet-cni)
busybox=/bin/busybox
# (grep reads the whole list: with -q it may leave early and pipefail then sees busybox's
# SIGPIPE.)
if ! "$busybox" --list 2>/dev/null | grep -x sh >/dev/null; then
  echo "busybox (Debian: busybox-static) is needed for the image's shell" >&2
  exit 1
fi
if [ "$profile" = release ]; then
  (cd "$root" && cargo build --release -p netlet-host -p netlet-cni -p netlet-bridge -p netlet-nft -p netlet-devices --bins >&2)
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
for b in "${bins[@]}"; do
  install -m 0755 "$target/$profile/$b" "$rootfs/usr/local/bin/$b"
  strip --strip-debug "$rootfs/usr/local/bin/$b"
  # The libraries it links, and the loader, at the same paths.
  ldd "$target/$profile/$b" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
install -m 0755 "$busybox" "$rootfs/bin/busybox"
for applet in sh cp mv cat ls mkdir rm; do
  ln -s busybox "$rootfs/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$rootfs/etc/passwd"
# /var/run is /run, as on the nodes: runtimes hand CNI plugins namespaces under /var/run/netns.
mkdir -p "$rootfs/run" "$rootfs/var"
ln -s ../run "$rootfs/var/run"
mkdir -p "$out"
archive="$out/netlet-$version.oci.tar"
python3 "$root/deploy/oci_image.py" --gzip "$rootfs" "docker.io/library/netlet:$version" "$archive" \
  /usr/local/bin/netlet --env PATH=/usr/local/bin:/bin
echo "$archive"
