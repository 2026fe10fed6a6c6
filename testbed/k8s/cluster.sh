#!/usr/bin/env bash
# A real Kubernetes cluster on this one machine, with netlet as its network, deployed from
# deploy/ as a user deploys it.
#
#   testbed/k8s/cluster.sh up      builds what is missing, starts the cluster, deploys netlet,
#                                  waits until every node is Ready; prints the kubeconfig
#   testbed/k8s/cluster.sh down    stops everything and removes what `up` made
#   testbed/k8s/cluster.sh kubectl ARGS...   kubectl against it
#   testbed/k8s/cluster.sh ctr NODE ARGS...   ctr against a node's containerd (namespace k8s.io)
#
# Environment: NETLET_CLUSTER (a short name, default kc: several clusters can run at once),
# NETLET_CLUSTER_NODES (default 2), NETLET_IMAGE (the netlet image archive; default: built by
# deploy/build-image.sh, release), NETLET_K8S_BIN (the binaries, see build.sh),
# NETLET_CLUSTER_DIR (its files; default /var/tmp/netlet-cluster-$NETLET_CLUSTER),
# NETLET_CLUSTER_NETWORK (netlet, the default; or reference: the reference CNI plugins and
# kube-proxy instead, the anchor of the benchmarks), NETLET_CLUSTER_TOPOLOGY (segment, the
# default: every node on one L2 segment; or routed: every node on a segment of its own behind
# a router, below).
#
# The machine as the cluster sees it:
# - a namespace netlet-<name>-ctl stands for the control plane's machine and the underlay: a
#   bridge ul0 (192.0.2.1/24, 2001:db8::1/64) with etcd, kube-apiserver (192.0.2.1:6443),
#   kube-controller-manager (node CIDRs from 10.244.0.0/16 and fd00:10:244::/56, EndpointSlices,
#   namespaces, service accounts), kube-scheduler, and a stub DNS server standing for the
#   nodes' upstream resolver (192.0.2.1:53; no route leaves the machine);
# - each node is a namespace netlet-<name>-<letter> on that segment (192.0.2.1x, 2001:db8::1x),
#   or, routed, on a segment of its own (198.18.x.10/24, 2001:db8:x::10/64 for the x-th node)
#   whose router is the control plane's namespace (198.18.x.1, 2001:db8:x::1); the router
#   forwards between nodes only what the nodes address to each other (underlay addresses): a
#   packet from or to a pod address is dropped there, as on a routed underlay that knows no pod
#   CIDRs, so pods reach pods of other nodes only through the network's overlay. The reference
#   network has no overlay: it runs on the segment only;
#   with its own containerd (Debian's 1.6) and a kubelet built from k8s.io/kubernetes, both in
#   one mount namespace of the node's own, where /run/netlet, /var/lib/netlet, /etc/cni/net.d,
#   /opt/cni/bin, /var/lib/kubelet, /var/log/pods, /var/log/containers and /run/netns are the
#   node's own directories (two nodes on one machine must not share netlet's socket or the
#   CNI configuration), and a cgroup root of its own (/netlet-<name>-<letter>);
# - images come from source: the pause image, netlet's image, agnhost (the e2e suites' test
#   image, as registry.k8s.io/e2e-test-images/agnhost:2.56), imported into each containerd;
# - no CoreDNS and no kube-proxy: the kube-dns Service's IP (10.96.0.10) is taken over by
#   netlet's node-local DNS on every node, and netlet programs Services.
#
# Started with nsenter (not `ip netns exec`, which remounts /sys and hides the cgroup mounts
# from the kubelet). cgroup v1 hosts need failCgroupV1: false and the cgroupfs driver.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
name=${NETLET_CLUSTER:-kc}
nodes=${NETLET_CLUSTER_NODES:-2}
network=${NETLET_CLUSTER_NETWORK:-netlet}
topology=${NETLET_CLUSTER_TOPOLOGY:-segment}
case $topology/$network in
  segment/* | routed/netlet) ;;
  routed/reference) echo "cluster.sh: the reference network has no overlay; it runs on a segment only" >&2; exit 2 ;;
  *) echo "cluster.sh: NETLET_CLUSTER_TOPOLOGY is segment or routed, not $topology" >&2; exit 2 ;;
esac
dir=${NETLET_CLUSTER_DIR:-/var/tmp/netlet-cluster-$name}
bin=${NETLET_K8S_BIN:-/var/tmp/netlet-k8s-bin}
export NETLET_K8S_BIN=$bin
ctl=netlet-$name-ctl
letters=(a b c d e f g h)
token=netlet-cluster-admin

node_ns() { echo "netlet-$name-${letters[$1]}"; }
node_name() { echo "node-${letters[$1]}"; }
# The i-th node's underlay addresses and their router.
node_ip4() { if [ "$topology" = routed ]; then echo "198.18.$(($1 + 1)).10"; else echo "192.0.2.1$1"; fi; }
node_ip6() { if [ "$topology" = routed ]; then echo "2001:db8:$(($1 + 1))::10"; else echo "2001:db8::1$1"; fi; }
gateway4() { if [ "$topology" = routed ]; then echo "198.18.$(($1 + 1)).1"; else echo 192.0.2.1; fi; }
gateway6() { if [ "$topology" = routed ]; then echo "2001:db8:$(($1 + 1))::1"; else echo 2001:db8::1; fi; }
in_ctl() { nsenter --net="/run/netns/$ctl" "$@"; }
kc() { in_ctl "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }
log() { echo "cluster.sh: $*" >&2; }

# Starts a daemon in the background, its own session, output to $dir/logs/<tag>.log; the pid
# in $dir/pids/<tag>.
daemon() {
  local tag=$1
  shift
  mkdir -p "$dir/logs" "$dir/pids"
  setsid "$@" </dev/null >>"$dir/logs/$tag.log" 2>&1 &
  echo $! >"$dir/pids/$tag"
}

wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > end)); then
      log "$what: not within ${secs}s"
      return 1
    fi
    sleep 0.5
  done
}

kubeconfig() { # file server user-token
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster: {server: "$2", certificate-authority: "$dir/pki/ca.pem"}
users:
- name: user
  user: {token: "$3"}
contexts:
- name: $name
  context: {cluster: $name, user: user}
current-context: $name
EOF
}

pki() {
  local p=$dir/pki
  mkdir -p "$p"
  cd "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 \
    -subj "/CN=netlet-$name-ca" 2>/dev/null
  issue() { # name subject san
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "${3:+subjectAltName=$3}" "extendedKeyUsage=serverAuth,clientAuth" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
      -days 30 -extfile "$1.ext" 2>/dev/null
  }
  issue apiserver /CN=kube-apiserver \
    "IP:192.0.2.1,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  # The API server's client certificate towards kubelets (logs, exec, port-forward).
  issue kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" ""
  # The hostname webhook's serving certificate (the Secret netlet-webhook-tls).
  issue webhook /CN=netlet-webhook "DNS:netlet-webhook.netlet-system.svc"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # Static tokens: the administrator, the controller manager, the scheduler, each kubelet
  # (system:node:<name> in system:nodes, so the Node authorizer and NodeRestriction apply).
  {
    echo "$token,admin,admin,system:masters"
    echo "netlet-cluster-cm,system:kube-controller-manager,cm"
    echo "netlet-cluster-sched,system:kube-scheduler,sched"
    echo "netlet-cluster-kube-proxy,system:kube-proxy,kube-proxy"
    for ((i = 0; i < nodes; i++)); do
      echo "netlet-cluster-$(node_name "$i"),system:node:$(node_name "$i"),$(node_name "$i"),system:nodes"
    done
  } >tokens.csv
  cd - >/dev/null
}

underlay() {
  ip netns add "$ctl"
  ip -n "$ctl" link set lo up
  # The control plane's own address: on the segment's bridge, or (routed) on the router's
  # loopback, its segments around it.
  if [ "$topology" = routed ]; then
    ip -n "$ctl" addr add 192.0.2.1/32 dev lo
    ip -n "$ctl" addr add 2001:db8::1/128 dev lo
  else
    ip -n "$ctl" link add ul0 type bridge
    ip -n "$ctl" addr add 192.0.2.1/24 dev ul0
    ip -n "$ctl" addr add 2001:db8::1/64 dev ul0 nodad
    ip -n "$ctl" link set ul0 up
  fi
  for ((i = 0; i < nodes; i++)); do
    local ns l=${letters[$i]}
    ns=$(node_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add ul0 netns "$ns" type veth peer name "ul-$l" netns "$ctl"
    if [ "$topology" = routed ]; then
      ip -n "$ctl" addr add "$(gateway4 "$i")/24" dev "ul-$l"
      ip -n "$ctl" addr add "$(gateway6 "$i")/64" dev "ul-$l" nodad
      ip -n "$ctl" link set "ul-$l" up
    else
      ip -n "$ctl" link set "ul-$l" master ul0 up
    fi
    ip -n "$ns" addr add "$(node_ip4 "$i")/24" dev ul0
    ip -n "$ns" addr add "$(node_ip6 "$i")/64" dev ul0 nodad
    ip -n "$ns" link set ul0 up
    # Towards the control plane's namespace, never out of the machine.
    ip -n "$ns" route add default via "$(gateway4 "$i")"
    ip -n "$ns" -6 route add default via "$(gateway6 "$i")"
  done
  if [ "$topology" = routed ]; then
    ip netns exec "$ctl" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    # Between nodes the router carries the nodes' own packets only (the overlay's, the
    # kubelet's, NodePorts'); pod addresses are not routed between segments.
    nsenter --net="/run/netns/$ctl" nft -f - <<EOF
table inet netlet-cluster-router {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "ul-*" oifname "ul-*" ip saddr 10.244.0.0/16 counter drop
    iifname "ul-*" oifname "ul-*" ip daddr 10.244.0.0/16 counter drop
    iifname "ul-*" oifname "ul-*" ip6 saddr fd00:10:244::/56 counter drop
    iifname "ul-*" oifname "ul-*" ip6 daddr fd00:10:244::/56 counter drop
  }
}
EOF
  fi
}

control_plane() {
  local p=$dir/pki
  daemon etcd nsenter --net="/run/netns/$ctl" "$bin/etcd" --data-dir "$dir/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380
  daemon kube-apiserver nsenter --net="/run/netns/$ctl" "$bin/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 --bind-address 0.0.0.0 --advertise-address 192.0.2.1 \
    --secure-port 6443 --tls-cert-file "$p/apiserver.pem" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.pem" --token-auth-file "$p/tokens.csv" \
    --kubelet-client-certificate "$p/kubelet-client.pem" --kubelet-client-key "$p/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --enable-aggregator-routing=true
  wait_for "kube-apiserver ready" 90 in_ctl curl -sf --cacert "$p/ca.pem" \
    -H "Authorization: Bearer $token" https://192.0.2.1:6443/readyz
  kubeconfig "$dir/admin.kubeconfig" https://192.0.2.1:6443 "$token"
  kubeconfig "$dir/cm.kubeconfig" https://192.0.2.1:6443 netlet-cluster-cm
  kubeconfig "$dir/sched.kubeconfig" https://192.0.2.1:6443 netlet-cluster-sched
  daemon kube-controller-manager nsenter --net="/run/netns/$ctl" "$bin/kube-controller-manager" \
    --kubeconfig "$dir/cm.kubeconfig" --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.pem" \
    --allocate-node-cidrs --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 \
    --node-cidr-mask-size-ipv4 24 --node-cidr-mask-size-ipv6 64 \
    --service-cluster-ip-range 10.96.0.0/16 --bind-address 127.0.0.1 --secure-port 10257
  daemon kube-scheduler nsenter --net="/run/netns/$ctl" "$bin/kube-scheduler" \
    --kubeconfig "$dir/sched.kubeconfig" --leader-elect=false --bind-address 127.0.0.1 \
    --secure-port 10259
  # The nodes' upstream resolver (names outside the cluster).
  if [ -x "${NETLET_DNS_STUB:-}" ]; then
    daemon dns-stub nsenter --net="/run/netns/$ctl" "$NETLET_DNS_STUB" --listen 192.0.2.1:53 \
      --record "outside.example.com A 192.0.2.1 60"
  fi
}

# A cgroup root for node $1 in every hierarchy (cgroup v1 hybrid: cpuset's cpus and mems copied).
cgroups() {
  local cg=/netlet-$name-${letters[$1]} h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h$cg"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h$cg/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$cg/cpuset.mems"
    fi
  done
}

node() {
  local i=$1 n ns l=${letters[$1]}
  n=$(node_name "$i")
  ns=$(node_ns "$i")
  local d=$dir/$n
  mkdir -p "$d/root" "$d/fs"
  cgroups "$i"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
  echo "nameserver 192.0.2.1" >"$d/resolv.conf"
  kubeconfig "$d/kubelet.kubeconfig" https://192.0.2.1:6443 "netlet-cluster-$n"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /netlet-$name-$l
containerRuntimeEndpoint: unix://$d/containerd.sock
address: $(node_ip4 "$i")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.pem}
authorization: {mode: Webhook}
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
failSwapOn: false
# This machine's disk is shared and often nearly full; images cannot be pulled again (no
# registry), so neither eviction nor image garbage collection may act on disk usage.
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
serializeImagePulls: false
EOF
  # What runs inside the node's own mount namespace: its directories over the shared ones,
  # containerd, the images, the kubelet.
  cat >"$d/node.sh" <<EOF
set -eu
for p in /run/netlet /var/lib/netlet /etc/cni/net.d /opt/cni/bin /var/lib/kubelet /var/log/pods /var/log/containers /run/netns; do
  mkdir -p "$d/fs\$p"
  mount --bind "$d/fs\$p" "\$p"
  mount --make-shared "\$p"
done
# What a node's OS brings with its container runtime: the reference loopback plugin.
cp /usr/lib/cni/loopback /opt/cni/bin/loopback
containerd --config "$d/containerd.toml" >>"$dir/logs/containerd-$n.log" 2>&1 &
echo \$! >"$dir/pids/containerd-$n"
t=0
until ctr --address "$d/containerd.sock" version >/dev/null 2>&1; do
  t=\$((t+1)); [ \$t -lt 240 ] || { echo "containerd did not start" >&2; exit 1; }
  sleep 0.25
done
for a in $dir/images/*.tar; do
  ctr --address "$d/containerd.sock" -n k8s.io images import --no-unpack "\$a" >/dev/null
done
# The network-policy-api conformance suite (v0.2.0) names an older agnhost.
ctr --address "$d/containerd.sock" -n k8s.io images tag --force registry.k8s.io/e2e-test-images/agnhost:2.56 \
  registry.k8s.io/e2e-test-images/agnhost:2.45 >/dev/null
exec "$bin/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$d/kubelet.kubeconfig" \
  --hostname-override $n --node-ip $(node_ip4 "$i"),$(node_ip6 "$i") --v=2
EOF
  mkdir -p "/run/netlet" "/var/lib/netlet" "/etc/cni/net.d" "/opt/cni/bin" "/var/lib/kubelet" \
    "/var/log/pods" "/var/log/containers" "/run/netns"
  daemon "kubelet-$n" nsenter --net="/run/netns/$ns" unshare --mount --propagation slave \
    sh "$d/node.sh"
}

images() {
  mkdir -p "$dir/images"
  local img=${NETLET_IMAGE:-}
  if [ "$network" != reference ]; then
    if [ -z "$img" ]; then
      img=$("$root/deploy/build-image.sh" | tail -1)
    fi
    cp "$img" "$dir/images/netlet.tar"
  fi
  "$here/images.sh" "$dir/images"
}

up() {
  if [ -e "$dir/pids" ]; then
    log "$dir exists: run '$0 down' first"
    exit 1
  fi
  mkdir -p "$dir"
  log "building what is missing (testbed/k8s/build.sh)"
  "$here/build.sh"
  images
  pki
  underlay
  log "control plane"
  control_plane
  for ((i = 0; i < nodes; i++)); do
    log "node $(node_name "$i")"
    node "$i"
  done
  # The cluster's DNS Service, served by no pod: netlet's node-local DNS takes its IP over.
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  if [ "$network" = reference ]; then
    reference
  else
    deploy
  fi
  for ((i = 0; i < nodes; i++)); do
    wait_for "node $(node_name "$i") Ready" 300 kc wait --for=condition=Ready --timeout=2s \
      "node/$(node_name "$i")"
  done
  if [ "$network" != reference ]; then
    kc -n netlet-system rollout status daemonset/netlet --timeout=300s >&2
  fi
  control_plane_routes
  log "ready: export KUBECONFIG=$dir/admin.kubeconfig"
  echo "$dir/admin.kubeconfig"
}

# The control plane's machine reaches pods as a control plane node of a real cluster does (the
# API server proxies to pods and Services, calls webhooks and aggregated APIs at pod
# addresses): here it is no node of netlet's, so its routes to each node's pod CIDRs are set by
# hand, as on a router.
control_plane_routes() {
  local line cidr ip4 ip6 f
  # Each line: the node's InternalIPs (v4, v6: the kubelet's --node-ip), then its podCIDRs.
  while read -r line; do
    read -r -a f <<<"$line"
    ip4=${f[0]} ip6=${f[1]}
    for cidr in "${f[@]:2}"; do
      case $cidr in
        *:*) [ -n "$ip6" ] && ip -n "$ctl" -6 route replace "$cidr" via "$ip6" ;;
        *) ip -n "$ctl" route replace "$cidr" via "$ip4" ;;
      esac
    done
  done < <(kc get nodes -o go-template='{{range .items}}{{range .status.addresses}}{{if eq .type "InternalIP"}}{{.address}} {{end}}{{end}}{{range .spec.podCIDRs}}{{.}} {{end}}{{"\n"}}{{end}}')
}

# The anchor the benchmarks compare with, instead of netlet: the reference CNI plugins (bridge,
# host-local with each Node's podCIDRs, portmap) with routes between the nodes set by hand, and
# kube-proxy in nftables mode on every node (NETLET_CLUSTER_NETWORK=reference).
has_pod_cidrs() { [ -n "$(kc get node "$1" -o jsonpath='{.spec.podCIDRs}' 2>/dev/null)" ]; }

reference() {
  local i j n d cidrs cni=/usr/lib/cni
  for ((i = 0; i < nodes; i++)); do
    n=$(node_name "$i")
    wait_for "$n's podCIDRs" 120 has_pod_cidrs "$n"
  done
  for ((i = 0; i < nodes; i++)); do
    n=$(node_name "$i")
    d=$dir/$n
    mkdir -p "$d/fs/opt/cni/bin" "$d/fs/etc/cni/net.d"
    for p in bridge host-local portmap loopback; do cp "$cni/$p" "$d/fs/opt/cni/bin/"; done
    cidrs=$(kc get node "$n" -o jsonpath='{range .spec.podCIDRs[*]}[{"{"}"subnet": "{@}"{"}"}], {end}')
    cat >"$d/fs/etc/cni/net.d/10-reference.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "reference", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$d/cni-ipam", "ranges": [${cidrs%, }],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
    # The other nodes' pod CIDRs, by hand.
    for ((j = 0; j < nodes; j++)); do
      [ "$j" = "$i" ] && continue
      local other
      other=$(node_name "$j")
      for cidr in $(kc get node "$other" -o jsonpath='{.spec.podCIDRs[*]}'); do
        case $cidr in
          *:*) ip -n "$(node_ns "$i")" -6 route replace "$cidr" via "$(node_ip6 "$j")" ;;
          *) ip -n "$(node_ns "$i")" route replace "$cidr" via "$(node_ip4 "$j")" ;;
        esac
      done
    done
    ip netns exec "$(node_ns "$i")" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    kubeconfig "$d/kube-proxy.kubeconfig" https://192.0.2.1:6443 netlet-cluster-kube-proxy
    daemon "kube-proxy-$n" nsenter --net="/run/netns/$(node_ns "$i")" "$bin/kube-proxy" \
      --kubeconfig "$d/kube-proxy.kubeconfig" --hostname-override "$n" --proxy-mode nftables \
      --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 --conntrack-max-per-core 0 \
      --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
  done
}

# netlet as a user installs it: its CRDs and deploy/netlet.yaml, plus what a cluster of one's
# own supplies: the webhook's certificate and where the API server is.
deploy() {
  local p=$dir/pki
  wait_for "namespace default" 60 kc get namespace default
  kc apply -f "$root/deploy/crds/" >/dev/null
  kc create namespace netlet-system --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n netlet-system create secret tls netlet-webhook-tls --cert "$p/webhook.pem" \
    --key "$p/webhook.key" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n netlet-system create configmap netlet-apiserver \
    --from-literal KUBERNETES_SERVICE_HOST=192.0.2.1 --from-literal KUBERNETES_SERVICE_PORT=6443 \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc apply -f "$root/deploy/netlet.yaml" >/dev/null
  local ca
  ca=$(base64 -w0 <"$p/ca.pem")
  kc patch validatingwebhookconfiguration netlet-hostnames --type json -p \
    "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca\"},{\"op\":\"add\",\"path\":\"/webhooks/1/clientConfig/caBundle\",\"value\":\"$ca\"}]" >/dev/null
}

down() {
  local f
  if [ -d "$dir/pids" ]; then
    for f in "$dir"/pids/*; do
      kill -9 "$(cat "$f")" 2>/dev/null || true
    done
  fi
  # The shims and every container outlive containerd: they are found by the node's directory
  # and by the cgroups the kubelet made.
  pkill -9 -f "$dir/" 2>/dev/null || true
  local l cg h
  for l in "${letters[@]}"; do
    cg=/netlet-$name-$l
    for h in /sys/fs/cgroup/*/; do
      [ -d "$h$cg" ] || continue
      find "$h$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
  done
  sleep 0.5
  for l in "${letters[@]}"; do
    cg=/netlet-$name-$l
    for h in /sys/fs/cgroup/*/; do
      [ -d "$h$cg" ] || continue
      find "$h$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    ip netns del "netlet-$name-$l" 2>/dev/null || true
  done
  ip netns del "$ctl" 2>/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  up) up ;;
  routes) control_plane_routes ;;
  ctr)
    # ctr against one node's containerd: cluster.sh ctr node-a images ls
    n=$2
    shift 2
    ctr --address "$dir/$n/containerd.sock" -n k8s.io "$@"
    ;;
  down) down ;;
  kubectl)
    shift
    kc "$@"
    ;;
  *)
    echo "usage: $0 up|down|routes|kubectl ARGS...|ctr NODE ARGS..." >&2
    exit 2
    ;;
esac
