#!/usr/bin/env bash
# Generates the Python stubs of netlet.v1alpha1 from proto/ into $1 with grpcio-tools.
set -euo pipefail
out=${1:?usage: gen.sh OUTDIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$root/proto" --python_out="$out" --grpc_python_out="$out" \
  "$root"/proto/netlet/v1alpha1/*.proto
touch "$out/netlet/__init__.py" "$out/netlet/v1alpha1/__init__.py"
