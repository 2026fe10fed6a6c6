package netlet

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

// The same rules as the Rust SDK's netlet_sdk::labels and validate::network_policy_peer /
// network_policy_port: what the Kubernetes API server accepts.

var (
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$`)
	labelNameRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	portNameRe   = regexp.MustCompile(`^[a-z0-9-]{1,15}$`)
)

// LabelKey checks a qualified label key: an optional DNS-subdomain prefix and '/', then a name
// of 1-63 alphanumerics, '-', '_', '.', alphanumeric at both ends.
func LabelKey(field, k string) error {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		prefix := k[:i]
		name = k[i+1:]
		if prefix == "" || len(prefix) > 253 || !subdomainRe.MatchString(prefix) {
			return Invalid(field, fmt.Sprintf("%q: the prefix is not a DNS subdomain", k))
		}
	}
	if !labelNameRe.MatchString(name) {
		return Invalid(field, fmt.Sprintf("%q is not a label key (1-63 of A-Z, a-z, 0-9, '-', '_', '.', after an optional prefix/)", k))
	}
	return nil
}

// LabelValue checks a label value: at most 63 alphanumerics, '-', '_', '.', alphanumeric at both
// ends; empty is one.
func LabelValue(field, v string) error {
	if !labelValueRe.MatchString(v) {
		return Invalid(field, fmt.Sprintf("%q is not a label value (63 characters at most: alphanumerics, '-', '_', '.', alphanumeric at both ends)", v))
	}
	return nil
}

// LabelSelector checks a selector: keys and values as labels have them; In and NotIn need
// values, Exists and DoesNotExist take none.
func LabelSelector(field string, s *pb.LabelSelector) error {
	for k, v := range s.GetMatchLabels() {
		if err := LabelKey(field+".match_labels", k); err != nil {
			return err
		}
		if err := LabelValue(fmt.Sprintf("%s.match_labels[%s]", field, k), v); err != nil {
			return err
		}
	}
	for i, r := range s.GetMatchExpressions() {
		f := fmt.Sprintf("%s.match_expressions[%d]", field, i)
		if err := LabelKey(f+".key", r.GetKey()); err != nil {
			return err
		}
		switch r.GetOperator() {
		case "In", "NotIn":
			if len(r.GetValues()) == 0 {
				return Invalid(f+".values", "required for operator "+r.GetOperator())
			}
		case "Exists", "DoesNotExist":
			if len(r.GetValues()) != 0 {
				return Invalid(f+".values", "must be empty for operator "+r.GetOperator())
			}
		default:
			return Invalid(f+".operator", fmt.Sprintf("%q is not In, NotIn, Exists or DoesNotExist", r.GetOperator()))
		}
		for j, v := range r.GetValues() {
			if err := LabelValue(fmt.Sprintf("%s.values[%d]", f, j), v); err != nil {
				return err
			}
		}
	}
	return nil
}

// Matches reports whether labels satisfy s (every requirement ANDed; an empty selector matches
// everything; NotIn also matches objects without the label).
func Matches(s *pb.LabelSelector, labels map[string]string) bool {
	for k, v := range s.GetMatchLabels() {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.GetMatchExpressions() {
		v, ok := labels[r.GetKey()]
		in := false
		for _, x := range r.GetValues() {
			in = in || (ok && x == v)
		}
		switch r.GetOperator() {
		case "In":
			if !in {
				return false
			}
		case "NotIn":
			if in {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// NetworkPolicyPeer checks a peer: pods and/or namespaces by selector, or an ipBlock whose
// exceptions lie strictly inside it; never both kinds, never neither.
func NetworkPolicyPeer(field string, p *pb.NetworkPolicyPeer) error {
	selectors := p.GetPodSelector() != nil || p.GetNamespaceSelector() != nil
	if s := p.GetPodSelector(); s != nil {
		if err := LabelSelector(field+".pod_selector", s); err != nil {
			return err
		}
	}
	if s := p.GetNamespaceSelector(); s != nil {
		if err := LabelSelector(field+".namespace_selector", s); err != nil {
			return err
		}
	}
	if p.GetIpBlockCidr() == "" {
		if len(p.GetIpBlockExcept()) > 0 {
			return Invalid(field+".ip_block_except", "only with ip_block_cidr")
		}
		if !selectors && len(p.GetResolvedAddresses()) == 0 && p.GetAddressSet() == "" {
			return Invalid(field, "one of pod_selector, namespace_selector or ip_block_cidr is required")
		}
	} else {
		if selectors {
			return Invalid(field+".ip_block_cidr", "an ipBlock peer takes no pod or namespace selector")
		}
		block, err := netip.ParsePrefix(p.GetIpBlockCidr())
		if err != nil {
			return Invalid(field+".ip_block_cidr", fmt.Sprintf("%q is not a CIDR", p.GetIpBlockCidr()))
		}
		for i, c := range p.GetIpBlockExcept() {
			f := fmt.Sprintf("%s.ip_block_except[%d]", field, i)
			e, err := netip.ParsePrefix(c)
			if err != nil {
				return Invalid(f, fmt.Sprintf("%q is not a CIDR", c))
			}
			if !(block.Masked().Contains(e.Addr()) && e.Bits() > block.Bits()) {
				return Invalid(f, fmt.Sprintf("%s is not strictly inside %s", c, p.GetIpBlockCidr()))
			}
		}
	}
	for i, a := range p.GetResolvedAddresses() {
		if _, err := Address(fmt.Sprintf("%s.resolved_addresses[%d]", field, i), a); err != nil {
			return err
		}
	}
	if n := p.GetAddressSet(); n != "" {
		return AddressSetName(field+".address_set", n)
	}
	return nil
}

var addressSetNameRe = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// AddressSetName checks the name of a shared address set: 1-64 characters of [a-z0-9-].
func AddressSetName(field, v string) error {
	if v == "" {
		return Invalid(field, "required")
	}
	if !addressSetNameRe.MatchString(v) {
		return Invalid(field, fmt.Sprintf("%q is not an address set name (1-64 of [a-z0-9-])", v))
	}
	return nil
}

// NetworkPolicyPort checks a port: a number or an IANA name (not both); a range only from a
// number.
func NetworkPolicyPort(field string, p *pb.NetworkPolicyPort) error {
	if p.GetPort() > 65535 {
		return Invalid(field+".port", fmt.Sprintf("%d is not a port", p.GetPort()))
	}
	if n := p.GetNamedPort(); n != "" {
		if p.GetPort() != 0 {
			return Invalid(field+".named_port", "a port is a number or a name, not both")
		}
		if !portNameRe.MatchString(n) || !strings.ContainsAny(n, "abcdefghijklmnopqrstuvwxyz") {
			return Invalid(field+".named_port", fmt.Sprintf("%q is not a port name (IANA_SVC_NAME)", n))
		}
	}
	for i, t := range p.GetNamedPortTargets() {
		f := fmt.Sprintf("%s.named_port_targets[%d]", field, i)
		if p.GetNamedPort() == "" {
			return Invalid(f, "only with named_port")
		}
		if _, err := netip.ParseAddr(t.GetAddress()); err != nil {
			return Invalid(f+".address", fmt.Sprintf("%q is not an IP address", t.GetAddress()))
		}
		if t.GetPort() == 0 || t.GetPort() > 65535 {
			return Invalid(f+".port", fmt.Sprintf("%d is not a port", t.GetPort()))
		}
	}
	if e := p.GetEndPort(); e != 0 {
		if p.GetPort() == 0 {
			return Invalid(field+".end_port", "only with a numeric port")
		}
		if e < p.GetPort() || e > 65535 {
			return Invalid(field+".end_port", fmt.Sprintf("%d must be in %d..=65535", e, p.GetPort()))
		}
	}
	return nil
}
