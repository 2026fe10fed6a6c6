package netlet

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

var (
	dnsLabelRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	sandboxIDRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,256}$`)
	macRe       = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
)

// DNSLabel checks a network or namespace name: 1-63 of a-z, 0-9, '-', alphanumeric at both ends.
func DNSLabel(field, v string) error {
	if v == "" {
		return Invalid(field, "required")
	}
	if !dnsLabelRe.MatchString(v) {
		return Invalid(field, fmt.Sprintf("%q is not a DNS-1123 label (1-63 of a-z, 0-9, '-')", v))
	}
	return nil
}

// SandboxID checks a sandbox id: 1-256 of A-Z, a-z, 0-9, '_', '.', '-'.
func SandboxID(field, v string) error {
	if v == "" {
		return Invalid(field, "required")
	}
	if !sandboxIDRe.MatchString(v) {
		return Invalid(field, fmt.Sprintf("%q is not a sandbox id (1-256 of A-Z, a-z, 0-9, '_', '.', '-')", v))
	}
	return nil
}

// InterfaceName checks a Linux interface name: 1-15 printable bytes, no '/' or ':'.
func InterfaceName(field, v string) error {
	ok := v != "" && len(v) <= 15 && v != "." && v != ".." && !strings.ContainsAny(v, "/:")
	for _, b := range []byte(v) {
		ok = ok && b > ' ' && b < 0x7f
	}
	if !ok {
		return Invalid(field, fmt.Sprintf("%q is not an interface name (1-15 printable chars, no '/', ':')", v))
	}
	return nil
}

// Address parses a plain address or one in CIDR notation.
func Address(field, v string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, Invalid(field, fmt.Sprintf("%q is not an IP address or CIDR", v))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// MAC checks a unicast Ethernet address aa:bb:cc:dd:ee:ff.
func MAC(field, v string) error {
	if !macRe.MatchString(v) || (hexByte(v[:2])&1) == 1 {
		return Invalid(field, fmt.Sprintf("%q is not a unicast MAC (aa:bb:cc:dd:ee:ff)", v))
	}
	return nil
}

func hexByte(s string) byte {
	var b byte
	fmt.Sscanf(s, "%02x", &b)
	return b
}

// NetworkSelection checks one requested attachment at field.
func NetworkSelection(field string, n *pb.NetworkSelection) error {
	if err := DNSLabel(field+".network", n.GetNetwork()); err != nil {
		return err
	}
	if n.GetInterfaceName() != "" {
		if err := InterfaceName(field+".interface_name", n.GetInterfaceName()); err != nil {
			return err
		}
	}
	for i, ip := range n.GetIps() {
		if _, err := Address(fmt.Sprintf("%s.ips[%d]", field, i), ip); err != nil {
			return err
		}
	}
	if n.GetMac() != "" {
		if err := MAC(field+".mac", n.GetMac()); err != nil {
			return err
		}
	}
	if m := n.GetMtu(); m != 0 && (m < 68 || m > 65535) {
		return Invalid(field+".mtu", fmt.Sprintf("%d is not an MTU (68-65535)", m))
	}
	if n.GetDeviceId() != "" {
		if err := DNSLabel(field+".device_id", n.GetDeviceId()); err != nil {
			return err
		}
	}
	if len(n.GetRoutes()) > MaxRoutes {
		return Invalid(field+".routes", fmt.Sprintf("at most %d", MaxRoutes))
	}
	for i, r := range n.GetRoutes() {
		f := fmt.Sprintf("%s.routes[%d]", field, i)
		dst, err := netip.ParsePrefix(r.GetDestination())
		if err != nil {
			return Invalid(f+".destination", fmt.Sprintf("%q is not a CIDR (address/prefix)", r.GetDestination()))
		}
		if r.GetGateway() != "" {
			gw, err := netip.ParseAddr(r.GetGateway())
			if err != nil {
				return Invalid(f+".gateway", fmt.Sprintf("%q is not an IP address", r.GetGateway()))
			}
			if gw.Is4() != dst.Addr().Is4() {
				return Invalid(f+".gateway", "not of the destination's family")
			}
		}
	}
	return nil
}

// MaxRoutes is the most routes one attachment may ask for.
const MaxRoutes = 64

// PortMappings checks a pod's CRI port mappings: host_port 0 (not published) or a port,
// container_port a port, host_ip a plain address.
func PortMappings(field string, list []*pb.PortMapping) error {
	for i, pm := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		if pm.GetHostPort() > 65535 {
			return Invalid(f+".host_port", fmt.Sprintf("%d is not a port (1-65535)", pm.GetHostPort()))
		}
		if pm.GetContainerPort() == 0 || pm.GetContainerPort() > 65535 {
			return Invalid(f+".container_port", fmt.Sprintf("%d is not a port (1-65535)", pm.GetContainerPort()))
		}
		if pm.GetHostIp() != "" {
			if _, err := netip.ParseAddr(pm.GetHostIp()); err != nil {
				return Invalid(f+".host_ip", fmt.Sprintf("%q is not an IP address", pm.GetHostIp()))
			}
		}
	}
	return nil
}

// AttachPod checks an AttachPodRequest as the contract's field rules say.
func AttachPod(r *pb.AttachPodRequest) error {
	s := r.GetSandbox()
	if s == nil {
		return Invalid("sandbox", "required")
	}
	if err := SandboxID("sandbox.id", s.GetId()); err != nil {
		return err
	}
	if s.GetNetnsPath() == "" {
		return Invalid("sandbox.netns_path", "required")
	}
	if !strings.HasPrefix(s.GetNetnsPath(), "/") {
		return Invalid("sandbox.netns_path", "must be an absolute path")
	}
	if err := sandboxMetadata(s); err != nil {
		return err
	}
	if err := PortMappings("sandbox.port_mappings", s.GetPortMappings()); err != nil {
		return err
	}
	ifnames := map[string]bool{}
	for i, n := range r.GetNetworks() {
		f := fmt.Sprintf("networks[%d]", i)
		if err := NetworkSelection(f, n); err != nil {
			return err
		}
		if n.GetInterfaceName() != "" {
			if ifnames[n.GetInterfaceName()] {
				return Invalid(f+".interface_name", "used twice")
			}
			ifnames[n.GetInterfaceName()] = true
		}
	}
	return nil
}

// DetachPod checks a DetachPodRequest.
func DetachPod(r *pb.DetachPodRequest) error {
	if err := SandboxID("sandbox_id", r.GetSandboxId()); err != nil {
		return err
	}
	for i, n := range r.GetNetworks() {
		if err := NetworkSelection(fmt.Sprintf("networks[%d]", i), n); err != nil {
			return err
		}
	}
	return nil
}

// GarbageCollect checks a GarbageCollectRequest.
func GarbageCollect(r *pb.GarbageCollectRequest) error {
	for i, id := range r.GetValidSandboxIds() {
		if err := SandboxID(fmt.Sprintf("valid_sandbox_ids[%d]", i), id); err != nil {
			return err
		}
	}
	if r.GetNetwork() != "" {
		return DNSLabel("network", r.GetNetwork())
	}
	return nil
}

// ListAttachments checks the filters of a ListAttachmentsRequest.
func ListAttachments(r *pb.ListAttachmentsRequest) error {
	if r.GetNetwork() != "" {
		if err := DNSLabel("network", r.GetNetwork()); err != nil {
			return err
		}
	}
	if r.GetNamespace() != "" {
		return DNSLabel("namespace", r.GetNamespace())
	}
	return nil
}

var subdomainRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// sandboxMetadata checks the pod's names and DNS settings as Kubernetes bounds them (the same
// rules as the Rust SDK's validate::attach_pod).
func sandboxMetadata(s *pb.PodSandbox) error {
	if n := s.GetName(); n != "" && (len(n) > 253 || !subdomainRe.MatchString(n)) {
		return Invalid("sandbox.name", fmt.Sprintf("%q is not a DNS-1123 subdomain", n))
	}
	if ns := s.GetNamespace(); ns != "" {
		if err := DNSLabel("sandbox.namespace", ns); err != nil {
			return err
		}
	}
	if h := s.GetHostname(); h != "" {
		if err := DNSLabel("sandbox.hostname", h); err != nil {
			return err
		}
	}
	d := s.GetDnsConfig()
	if len(d.GetNameservers()) > 3 {
		return Invalid("sandbox.dns_config.nameservers", fmt.Sprintf("%d name servers, at most 3", len(d.GetNameservers())))
	}
	for i, n := range d.GetNameservers() {
		if _, err := netip.ParseAddr(n); err != nil {
			return Invalid(fmt.Sprintf("sandbox.dns_config.nameservers[%d]", i), fmt.Sprintf("%q is not an IP address", n))
		}
	}
	chars := 0
	for _, v := range d.GetSearches() {
		chars += len(v)
	}
	if len(d.GetSearches()) > 32 || chars > 2048 {
		return Invalid("sandbox.dns_config.searches", fmt.Sprintf("%d domains of %d characters, at most 32 of 2048", len(d.GetSearches()), chars))
	}
	return nil
}
