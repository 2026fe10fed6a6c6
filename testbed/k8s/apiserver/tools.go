//go:build tools

// Package k8sbins pins k8s.io/kubernetes so that `go build k8s.io/kubernetes/cmd/kube-apiserver`
// builds the API server the tests run (and kube-proxy, the component netlet replaces, and
// kubectl, which applies deploy/), and the rest of a real cluster (kube-controller-manager,
// kube-scheduler, kubelet) with the upstream e2e suite and its test image agnhost. Its go.mod replaces every staging module with the
// version of the same release (the replace directives of k8s.io/kubernetes' own go.mod, which
// `go install` refuses).
package k8sbins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
