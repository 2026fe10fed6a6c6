//go:build tools

// Package npapi pins sigs.k8s.io/network-policy-api, whose conformance suite (the
// ClusterNetworkPolicy profile) `go test -c sigs.k8s.io/network-policy-api/conformance` builds
// for testbed/k8s/npapi.sh.
package npapi

import (
	_ "sigs.k8s.io/network-policy-api/conformance"
)
