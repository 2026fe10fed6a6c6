#!/usr/bin/env bash
# Regenerates the Go stubs of netlet.v1alpha1 (api/netlet/v1alpha1) from ../../proto with pinned
# generators: protoc from grpcio-tools (pinned in testbed/run-tests), protoc-gen-go at the
# google.golang.org/protobuf version go.mod requires, protoc-gen-go-grpc at GRPC_GEN below.
# The proto files carry no go_package option (the contract is language-neutral); the import
# path is given here with M flags.
set -euo pipefail
cd "$(dirname "$0")"
GRPC_GEN=v1.6.2
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
PB=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
GOBIN=$bin go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PB"
GOBIN=$bin go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GRPC_GEN"
pkg=netlet.io/sdk/go/api/netlet/v1alpha1
files=(types identity node pods services policy devices cluster)
m=()
for f in "${files[@]}"; do m+=("M netlet/v1alpha1/$f.proto=$pkg;netletv1alpha1"); done
opts=$(IFS=,; echo "${m[*]// /}")
rm -rf api && mkdir -p api
python3 -m grpc_tools.protoc -I ../../proto \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out=api --go_opt=module=netlet.io/sdk/go/api,"$opts" \
  --go-grpc_out=api --go-grpc_opt=module=netlet.io/sdk/go/api,"$opts" \
  $(for f in "${files[@]}"; do echo "../../proto/netlet/v1alpha1/$f.proto"; done)
