package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
	"netlet.io/sdk/go/netlet"
)

// ptp is the driver: attachments by sandbox, the address pool, and the node's setup.
type ptp struct {
	pb.UnimplementedPodsServer
	name, network string
	subnet        netip.Prefix
	gateway       netip.Addr
	mtu           uint32
	stateFile     string

	mu    sync.Mutex // one attach or detach at a time: the pool, the records, the file
	pool  *pool
	pods  map[string]*pb.PodAttachments
	ready netlet.Readiness
}

func newPTP(name, network string, subnet netip.Prefix, gw netip.Addr, mtu uint32, stateDir string) (*ptp, error) {
	p := &ptp{
		name: name, network: network, subnet: subnet.Masked(), gateway: gw, mtu: mtu,
		pool: newPool(subnet), pods: map[string]*pb.PodAttachments{},
	}
	if stateDir != "" {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return nil, err
		}
		p.stateFile = filepath.Join(stateDir, "attachments.json")
		if err := p.load(); err != nil {
			return nil, err
		}
	}
	p.ready = p.setupNode()
	return p, nil
}

// setupNode turns forwarding on; its failure is the readiness.
func (p *ptp) setupNode() netlet.Readiness {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return netlet.Readiness{Reason: "SysctlFailed", Message: err.Error()}
	}
	return netlet.Readiness{Ready: true}
}

func (p *ptp) probe(context.Context) netlet.Readiness { return p.ready }

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

// hostName is the node-side veth: derived from sandbox and interface, so it is the same after a
// restart and a replay finds it.
func hostName(sandbox, ifname string) string {
	h := sha256.Sum256([]byte(sandbox + "/" + ifname))
	return "ptp" + hex.EncodeToString(h[:])[:11]
}

// podMAC derives a locally administered unicast MAC from the pod address (as the bridge driver
// does: a reused address keeps its MAC, so neighbours' caches stay right).
func podMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x0a, 0x58, b[0], b[1], b[2], b[3]}
}

func (p *ptp) AttachPod(ctx context.Context, r *pb.AttachPodRequest) (*pb.AttachPodResponse, error) {
	if err := netlet.AttachPod(r); err != nil {
		return nil, err
	}
	sels := r.GetNetworks()
	if len(sels) == 0 {
		sels = []*pb.NetworkSelection{{Network: "default"}}
	}
	for i, s := range sels {
		if s.GetNetwork() != p.network {
			return nil, netlet.FieldError(codes.FailedPrecondition, fmt.Sprintf("networks[%d].network", i),
				fmt.Sprintf("driver %s does not serve network %q", p.name, s.GetNetwork()), "NETWORK_NOT_SERVED")
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sb := r.GetSandbox()
	var out, made []*pb.Attachment
	for i, s := range sels {
		ifname := s.GetInterfaceName()
		if ifname == "" {
			ifname = "eth0"
			if i > 0 {
				ifname = fmt.Sprintf("net%d", i)
			}
		}
		// The idempotency key is (sandbox, network, interface): a replay returns what is held.
		if a := p.held(sb.GetId(), s.GetNetwork(), ifname); a != nil {
			out = append(out, a)
			continue
		}
		a, err := p.attachOne(sb, s, i, ifname)
		if err != nil {
			for _, m := range made {
				p.detachOne(sb.GetId(), m)
			}
			return nil, err
		}
		made = append(made, a)
		out = append(out, a)
	}
	if len(made) > 0 {
		rec := p.pods[sb.GetId()]
		if rec == nil {
			rec = &pb.PodAttachments{Sandbox: sb}
			p.pods[sb.GetId()] = rec
		}
		rec.Attachments = append(rec.Attachments, made...)
		if err := p.save(); err != nil {
			for _, m := range made {
				p.detachOne(sb.GetId(), m)
			}
			return nil, netlet.ReasonError(codes.Unavailable, "state file: "+err.Error(), "STATE_UNAVAILABLE")
		}
	}
	return &pb.AttachPodResponse{Attachments: out}, nil
}

func (p *ptp) held(sandbox, network, ifname string) *pb.Attachment {
	for _, a := range p.pods[sandbox].GetAttachments() {
		if a.GetNetwork() == network && a.GetInterfaceName() == ifname {
			return a
		}
	}
	return nil
}

// attachOne makes one veth into the pod with its address and routes; on failure nothing of it
// is left and its address is free again.
func (p *ptp) attachOne(sb *pb.PodSandbox, s *pb.NetworkSelection, i int, ifname string) (*pb.Attachment, error) {
	field := fmt.Sprintf("networks[%d]", i)
	var want netip.Addr
	for j, ip := range s.GetIps() {
		pre, _ := netlet.Address(fmt.Sprintf("%s.ips[%d]", field, j), ip) // validated before
		if !pre.Addr().Is4() {
			return nil, netlet.Invalid(fmt.Sprintf("%s.ips[%d]", field, j), "this network is IPv4 only")
		}
		want = pre.Addr()
	}
	owner := sb.GetId() + "/" + ifname
	addr, err := p.pool.take(owner, want)
	var inUse errInUse
	var outside errOutOfRange
	switch {
	case errors.As(err, &inUse):
		return nil, netlet.FieldError(codes.AlreadyExists, field+".ips", err.Error(), "ADDRESS_IN_USE")
	case errors.As(err, &outside):
		return nil, netlet.Invalid(field+".ips", fmt.Sprintf("%s (pool %s)", err, p.subnet))
	case err != nil:
		return nil, netlet.ReasonError(codes.ResourceExhausted, fmt.Sprintf("network %q: %s", p.network, err), "POOL_EXHAUSTED")
	}
	a, err := p.plumb(sb, s, ifname, addr, field)
	if err != nil {
		p.pool.release(addr, owner)
		return nil, err
	}
	return a, nil
}

func (p *ptp) plumb(sb *pb.PodSandbox, s *pb.NetworkSelection, ifname string, addr netip.Addr, field string) (*pb.Attachment, error) {
	ns, err := netns.GetFromPath(sb.GetNetnsPath())
	if err != nil {
		return nil, netlet.FieldError(codes.InvalidArgument, "sandbox.netns_path",
			fmt.Sprintf("%q is not a network namespace: %v", sb.GetNetnsPath(), err), "NETNS_INVALID")
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, netlet.FieldError(codes.InvalidArgument, "sandbox.netns_path",
			fmt.Sprintf("%q: %v", sb.GetNetnsPath(), err), "NETNS_INVALID")
	}
	defer h.Close()
	// A link of that name the driver did not make stays untouched: the attach is refused.
	if _, err := h.LinkByName(ifname); err == nil {
		return nil, netlet.FieldError(codes.AlreadyExists, field+".interface_name",
			fmt.Sprintf("%s already exists in the pod's namespace", ifname), "INTERFACE_EXISTS")
	}
	mtu := p.mtu
	if s.GetMtu() != 0 {
		mtu = s.GetMtu()
	}
	mac := podMAC(addr)
	if s.GetMac() != "" {
		mac, _ = net.ParseMAC(s.GetMac()) // validated before
	}
	host := hostName(sb.GetId(), ifname)
	internal := func(step string, err error) error {
		_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}})
		return netlet.ReasonError(codes.Internal, fmt.Sprintf("%s: %v", step, err), "DATAPLANE_FAILED")
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: host, MTU: int(mtu)},
		PeerName:         ifname,
		PeerHardwareAddr: mac,
		PeerNamespace:    netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, internal("veth", err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	pl, err := h.LinkByName(ifname)
	if err != nil {
		return nil, internal("pod link", err)
	}
	gw := hostNet(p.gateway)
	steps := []struct {
		what string
		do   func() error
	}{
		{"pod mtu", func() error { return h.LinkSetMTU(pl, int(mtu)) }},
		{"pod address", func() error { return h.AddrAdd(pl, &netlink.Addr{IPNet: hostNet(addr)}) }},
		{"pod link up", func() error { return h.LinkSetUp(pl) }},
		{"gateway route", func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: gw, Scope: netlink.SCOPE_LINK})
		}},
	}
	defaultRoute := s.DefaultRoute == nil || s.GetDefaultRoute()
	if defaultRoute {
		steps = append(steps, struct {
			what string
			do   func() error
		}{"default route", func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: p.gateway.AsSlice(),
				Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}})
		}})
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return nil, internal(st.what, err)
		}
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return nil, internal("host link", err)
	}
	// The node side carries the gateway address (as the CNI ptp plugin does): a local address
	// of the node, so the node answers ARP for it on this veth and pods reach the node through it.
	gwAddr := &netlink.Addr{IPNet: gw, Scope: int(netlink.SCOPE_LINK), Flags: unix.IFA_F_NOPREFIXROUTE}
	if err := netlink.AddrReplace(hl, gwAddr); err != nil {
		return nil, internal("host gateway address", err)
	}
	// Only the pod's own address may come from its veth (pods.proto, AttachPod, "Identity"):
	// strict reverse-path filtering drops any source not routed back through this veth, before
	// the first packet, since the veth is not up yet.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+host+"/rp_filter", []byte("1"), 0o644); err != nil {
		return nil, internal("host link rp_filter", err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, internal("host link up", err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: hostNet(addr), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, internal("host route", err)
	}
	a := &pb.Attachment{
		Network:       p.network,
		Driver:        p.name,
		InterfaceName: ifname,
		Mac:           mac.String(),
		Mtu:           mtu,
		Ips: []*pb.IpConfig{{
			Address: netip.PrefixFrom(addr, 32).String(),
			Family:  pb.IpFamily_IP_FAMILY_IPV4,
			Gateway: p.gateway.String(),
		}},
		DefaultRoute:  defaultRoute,
		HostInterface: host,
		HostMac:       hl.Attrs().HardwareAddr.String(),
		NetnsPath:     sb.GetNetnsPath(),
	}
	if defaultRoute {
		a.Routes = []*pb.Route{{Destination: "0.0.0.0/0", Gateway: p.gateway.String()}}
	}
	return a, nil
}

// detachOne removes one attachment's veth (its peer and routes go with it) and frees its
// address. A veth already gone is fine.
func (p *ptp) detachOne(sandbox string, a *pb.Attachment) {
	if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.GetHostInterface()}}); err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) && !errors.Is(err, syscall.ENODEV) {
			if _, lookup := netlink.LinkByName(a.GetHostInterface()); lookup == nil {
				// Still there: leave the address held rather than hand it out twice.
				return
			}
		}
	}
	for _, ip := range a.GetIps() {
		if pre, err := netip.ParsePrefix(ip.GetAddress()); err == nil {
			p.pool.release(pre.Addr(), sandbox+"/"+a.GetInterfaceName())
		}
	}
}

func (p *ptp) DetachPod(ctx context.Context, r *pb.DetachPodRequest) (*pb.DetachPodResponse, error) {
	if err := netlet.DetachPod(r); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.detach(r.GetSandboxId(), r.GetNetworks())
	if err := p.save(); err != nil {
		return nil, netlet.ReasonError(codes.Unavailable, "state file: "+err.Error(), "STATE_UNAVAILABLE")
	}
	return &pb.DetachPodResponse{}, nil
}

// detach removes the sandbox's attachments that `only` selects (all when empty), last first.
func (p *ptp) detach(sandbox string, only []*pb.NetworkSelection) {
	rec := p.pods[sandbox]
	if rec == nil {
		return
	}
	chosen := func(a *pb.Attachment) bool {
		if len(only) == 0 {
			return true
		}
		for _, s := range only {
			if s.GetNetwork() == a.GetNetwork() && (s.GetInterfaceName() == "" || s.GetInterfaceName() == a.GetInterfaceName()) {
				return true
			}
		}
		return false
	}
	var keep []*pb.Attachment
	for i := len(rec.Attachments) - 1; i >= 0; i-- {
		if a := rec.Attachments[i]; chosen(a) {
			p.detachOne(sandbox, a)
		} else {
			keep = append([]*pb.Attachment{a}, keep...)
		}
	}
	if len(keep) == 0 {
		delete(p.pods, sandbox)
	} else {
		rec.Attachments = keep
	}
}

func (p *ptp) sorted() []*pb.PodAttachments {
	ids := make([]string, 0, len(p.pods))
	for id := range p.pods {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]*pb.PodAttachments, 0, len(ids))
	for _, id := range ids {
		out = append(out, p.pods[id])
	}
	return out
}

func (p *ptp) PodNetworkStatus(ctx context.Context, r *pb.PodNetworkStatusRequest) (*pb.PodNetworkStatusResponse, error) {
	if err := netlet.SandboxID("sandbox_id", r.GetSandboxId()); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rec := p.pods[r.GetSandboxId()]
	if rec == nil {
		return nil, netlet.FieldError(codes.NotFound, "sandbox_id",
			fmt.Sprintf("%q is not attached", r.GetSandboxId()), "SANDBOX_NOT_ATTACHED")
	}
	return &pb.PodNetworkStatusResponse{Pod: rec}, nil
}

func (p *ptp) ListAttachments(ctx context.Context, r *pb.ListAttachmentsRequest) (*pb.ListAttachmentsResponse, error) {
	if err := netlet.ListAttachments(r); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := &pb.ListAttachmentsResponse{}
	for _, rec := range p.sorted() {
		if r.GetNamespace() != "" && rec.GetSandbox().GetNamespace() != r.GetNamespace() {
			continue
		}
		if r.GetNetwork() != "" && r.GetNetwork() != p.network {
			continue
		}
		out.Pods = append(out.Pods, rec)
	}
	return out, nil
}

func (p *ptp) GarbageCollect(ctx context.Context, r *pb.GarbageCollectRequest) (*pb.GarbageCollectResponse, error) {
	if err := netlet.GarbageCollect(r); err != nil {
		return nil, err
	}
	valid := map[string]bool{}
	for _, id := range r.GetValidSandboxIds() {
		valid[id] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := &pb.GarbageCollectResponse{}
	if r.GetNetwork() != "" && r.GetNetwork() != p.network {
		// Another network's collection: none of this driver's attachments are its to remove.
		return out, nil
	}
	for _, rec := range p.sorted() {
		if id := rec.GetSandbox().GetId(); !valid[id] {
			p.detach(id, nil)
			out.RemovedSandboxIds = append(out.RemovedSandboxIds, id)
		}
	}
	if err := p.save(); err != nil {
		return nil, netlet.ReasonError(codes.Unavailable, "state file: "+err.Error(), "STATE_UNAVAILABLE")
	}
	return out, nil
}

// save writes the attachments (write and rename, so a crash leaves the old or the new file).
func (p *ptp) save() error {
	if p.stateFile == "" {
		return nil
	}
	b, err := protojson.Marshal(&pb.ListAttachmentsResponse{Pods: p.sorted()})
	if err != nil {
		return err
	}
	tmp := p.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.stateFile)
}

// load reads the attachments back and holds their addresses again.
func (p *ptp) load() error {
	b, err := os.ReadFile(p.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st pb.ListAttachmentsResponse
	if err := protojson.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", p.stateFile, err)
	}
	for _, rec := range st.GetPods() {
		id := rec.GetSandbox().GetId()
		p.pods[id] = proto.Clone(rec).(*pb.PodAttachments)
		for _, a := range rec.GetAttachments() {
			for _, ip := range a.GetIps() {
				if pre, err := netip.ParsePrefix(ip.GetAddress()); err == nil {
					_, _ = p.pool.take(id+"/"+a.GetInterfaceName(), pre.Addr())
				}
			}
		}
	}
	return nil
}

// nodeServer answers NetworkReady for the driver's network.
type nodeServer struct {
	pb.UnimplementedNodeServer
	p *ptp
}

func (n nodeServer) readiness() *pb.NetworkReadiness {
	r := n.p.ready
	cond := &pb.Condition{
		Type: "NetworkReady", Status: pb.ConditionStatus_CONDITION_STATUS_TRUE, Reason: "Ready",
		Network: n.p.network, Driver: n.p.name,
	}
	if !r.Ready {
		cond.Status, cond.Reason, cond.Message = pb.ConditionStatus_CONDITION_STATUS_FALSE, r.Reason, r.Message
	}
	return &pb.NetworkReadiness{Ready: r.Ready, Reason: r.Reason, Message: r.Message, Conditions: []*pb.Condition{cond}}
}

func (n nodeServer) NetworkReady(ctx context.Context, r *pb.NetworkReadyRequest) (*pb.NetworkReadyResponse, error) {
	if r.GetNetwork() != "" {
		if err := netlet.DNSLabel("network", r.GetNetwork()); err != nil {
			return nil, err
		}
		if r.GetNetwork() != n.p.network {
			return nil, netlet.FieldError(codes.NotFound, "network",
				fmt.Sprintf("this driver does not serve %q", r.GetNetwork()), "NETWORK_NOT_SERVED")
		}
	}
	return &pb.NetworkReadyResponse{Readiness: n.readiness()}, nil
}

func (n nodeServer) WatchNetworkReady(r *pb.WatchNetworkReadyRequest, s pb.Node_WatchNetworkReadyServer) error {
	if r.GetNetwork() != "" {
		if err := netlet.DNSLabel("network", r.GetNetwork()); err != nil {
			return err
		}
	}
	if err := s.Send(&pb.WatchNetworkReadyResponse{Readiness: n.readiness()}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}
