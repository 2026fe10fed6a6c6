#!/usr/bin/env bash
# The upstream Kubernetes e2e suite (e2e.test built from k8s.io/kubernetes/test/e2e, the
# cluster's own version, by build.sh --e2e) against a cluster of cluster.sh, run from the
# control plane's namespace. Nothing in the suite is changed or tuned to.
#
#   testbed/k8s/e2e.sh conformance [ARGS...]  every [sig-network] test tagged [Conformance] (default)
#   testbed/k8s/e2e.sh netpol [ARGS...]       the NetworkPolicy suite ([sig-network] Netpol), but SCTP
#   testbed/k8s/e2e.sh ARGS...                e2e.test with these arguments (e.g. --ginkgo.focus RE)
#
# Environment: NETLET_CLUSTER and NETLET_CLUSTER_DIR as for cluster.sh; NETLET_E2E_REPORT,
# where the JUnit report goes (default: the cluster's directory, e2e-report).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${NETLET_CLUSTER:-kc}
dir=${NETLET_CLUSTER_DIR:-/var/tmp/netlet-cluster-$name}
bin=${NETLET_K8S_BIN:-/var/tmp/netlet-k8s-bin}
report=${NETLET_E2E_REPORT:-$dir/e2e-report}
export NETLET_K8S_BIN=$bin
"$here/build.sh" --e2e
case "${1:-conformance}" in
  conformance)
    shift || true
    set -- --ginkgo.focus '\[sig-network\].*\[Conformance\]' "$@"
    ;;
  netpol)
    # SCTP cannot run here: this machine's kernel has no SCTP (the suite's SCTP pods crash).
    shift
    set -- --ginkgo.focus '\[sig-network\] Netpol ' --ginkgo.skip 'SCTP' "$@"
    ;;
esac
mkdir -p "$report"
exec nsenter --net="/run/netns/netlet-$name-ctl" "$bin/e2e.test" \
  --kubeconfig "$dir/admin.kubeconfig" --provider skeleton --kubectl-path "$bin/kubectl" \
  --report-dir "$report" --ginkgo.no-color --ginkgo.timeout 3h "$@"
