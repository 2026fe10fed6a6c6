//go:build tools

// Package k8sbins pins k8s.io/kubernetes so that `go build k8s.io/kubernetes/cmd/kube-apiserver`
// builds the API server the tests run (and kube-proxy, the component netlet replaces, and
// kubectl, which applies deploy/). Its go.mod replaces every staging module with the
// version of the same release (the replace directives of k8s.io/kubernetes' own go.mod, which
// `go install` refuses).
package k8sbins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
