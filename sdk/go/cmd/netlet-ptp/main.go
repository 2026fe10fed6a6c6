// Command netlet-ptp is the reference netlet driver in Go: a routed point-to-point pod network
// (one veth per pod, the pod's address as a /32, a host route per pod, the node answering for
// a link-local gateway on its side of each veth), written against proto/ through the Go SDK alone. It serves Identity,
// Pods and Node for one network and passes netlet-conformance, data plane included.
//
//	netlet-ptp --network default --subnet 10.250.0.0/24 [--gateway 169.254.1.1] [--mtu 1500]
//	           [--socket PATH] [--state-dir DIR]
//
// The socket defaults to $NETLET_DRIVER_SOCKET (set by the host for supervised drivers); an
// external driver binds <plugin dir>/<name>.sock. The attachments are kept in
// <state dir>/attachments.json ($NETLET_DRIVER_STATE_DIR by default), so a restarted driver
// never hands an address out twice.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net/netip"
	"os"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
	"netlet.io/sdk/go/netlet"
)

func main() {
	name := flag.String("name", "ptp", "driver name (DNS-1123 label)")
	network := flag.String("network", "default", "network served")
	subnet := flag.String("subnet", "10.250.0.0/24", "IPv4 pool of pod addresses")
	gateway := flag.String("gateway", "169.254.1.1", "link-local gateway the node answers for")
	mtu := flag.Uint("mtu", 1500, "pod interface MTU")
	socket := flag.String("socket", "", "socket to serve on (default $"+netlet.SocketEnv+")")
	stateDir := flag.String("state-dir", os.Getenv(netlet.StateDirEnv), "where attachments are kept (empty: memory only)")
	flag.Parse()

	sub, err := netip.ParsePrefix(*subnet)
	if err != nil || !sub.Addr().Is4() {
		slog.Error("--subnet must be an IPv4 CIDR", "subnet", *subnet)
		os.Exit(2)
	}
	gw, err := netip.ParseAddr(*gateway)
	if err != nil || !gw.Is4() {
		slog.Error("--gateway must be an IPv4 address", "gateway", *gateway)
		os.Exit(2)
	}
	p, err := newPTP(*name, *network, sub, gw, uint32(*mtu), *stateDir)
	if err != nil {
		slog.Error("cannot start", "error", err)
		os.Exit(1)
	}
	d := &netlet.Driver{
		Name:     *name,
		Version:  "0.1.0-go",
		Networks: []string{*network},
		Socket:   *socket,
		Probe:    p.probe,
		// Static addresses and MACs are honoured; bandwidth limits are not.
		Features: []pb.Feature{pb.Feature_FEATURE_STATIC_IPS, pb.Feature_FEATURE_STATIC_MAC},
		Pods:     p,
		Node:     nodeServer{p: p},
	}
	slog.Info("netlet-ptp serving", "network", *network, "subnet", sub, "gateway", gw)
	if err := d.Serve(context.Background()); err != nil {
		slog.Error("serve", "error", err)
		os.Exit(1)
	}
}
