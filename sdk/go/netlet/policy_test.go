package netlet

import (
	"strings"
	"testing"

	"google.golang.org/grpc/status"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

func expr(key, op string, values ...string) *pb.LabelSelectorRequirement {
	return &pb.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
}

// The same cases as the Rust SDK's labels tests (the Kubernetes "Labels and Selectors" page).
func TestSelectorsMatchAsTheAPIDoes(t *testing.T) {
	web := map[string]string{"app": "web", "tier": "frontend", "env": "prod"}
	bare := map[string]string{}
	one := func(e *pb.LabelSelectorRequirement) *pb.LabelSelector {
		return &pb.LabelSelector{MatchExpressions: []*pb.LabelSelectorRequirement{e}}
	}
	cases := []struct {
		s      *pb.LabelSelector
		labels map[string]string
		want   bool
	}{
		{&pb.LabelSelector{}, bare, true},
		{&pb.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, web, true},
		{&pb.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, bare, false},
		{one(expr("env", "In", "prod", "qa")), web, true},
		{one(expr("env", "In", "prod")), bare, false},
		{one(expr("env", "NotIn", "prod")), bare, true},
		{one(expr("env", "NotIn", "prod")), web, false},
		{one(expr("tier", "Exists")), web, true},
		{one(expr("tier", "DoesNotExist")), web, false},
		{&pb.LabelSelector{MatchLabels: map[string]string{"app": "web"}, MatchExpressions: []*pb.LabelSelectorRequirement{expr("env", "In", "qa")}}, web, false},
	}
	for i, c := range cases {
		if got := Matches(c.s, c.labels); got != c.want {
			t.Errorf("case %d: got %v, want %v", i, got, c.want)
		}
	}
}

func TestPolicyFieldsAreCheckedAsTheAPIServerDoes(t *testing.T) {
	prefix := func(err error) string {
		if err == nil {
			return ""
		}
		m := status.Convert(err).Message()
		return m[:strings.Index(m, ":")]
	}
	sel := func(e *pb.LabelSelectorRequirement) *pb.LabelSelector {
		return &pb.LabelSelector{MatchExpressions: []*pb.LabelSelectorRequirement{e}}
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{LabelSelector("s", sel(expr("app", "In"))), "s.match_expressions[0].values"},
		{LabelSelector("s", sel(expr("app", "Exists", "x"))), "s.match_expressions[0].values"},
		{LabelSelector("s", sel(expr("app", "Has", "x"))), "s.match_expressions[0].operator"},
		{LabelSelector("s", sel(expr("", "Exists"))), "s.match_expressions[0].key"},
		{LabelSelector("s", sel(expr("example.com/tier", "NotIn", "a", "b.c"))), ""},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{}), "p"},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{PodSelector: &pb.LabelSelector{}}), ""},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{IpBlockCidr: "10.0.0.0/16", IpBlockExcept: []string{"10.0.1.0/24"}}), ""},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{IpBlockCidr: "10.0.0.0/16", IpBlockExcept: []string{"10.1.0.0/24"}}), "p.ip_block_except[0]"},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{IpBlockCidr: "10.0.0.0/16", IpBlockExcept: []string{"10.0.0.0/16"}}), "p.ip_block_except[0]"},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{IpBlockCidr: "10.0.0.0/16", NamespaceSelector: &pb.LabelSelector{}}), "p.ip_block_cidr"},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{AddressSet: "p-0123abcd"}), ""},
		{NetworkPolicyPeer("p", &pb.NetworkPolicyPeer{AddressSet: "Bad_Name"}), "p.address_set"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{NamedPort: "http", NamedPortTargets: []*pb.NamedPortTarget{{Address: "10.0.0.1", Port: 8080}}}), ""},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{NamedPort: "http", NamedPortTargets: []*pb.NamedPortTarget{{Address: "10.0.0.1", Port: 0}}}), "q.named_port_targets[0].port"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{Port: 80, NamedPortTargets: []*pb.NamedPortTarget{{Address: "10.0.0.1", Port: 80}}}), "q.named_port_targets[0]"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{Port: 80, EndPort: 90}), ""},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{NamedPort: "http"}), ""},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{Port: 80, EndPort: 79}), "q.end_port"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{EndPort: 79}), "q.end_port"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{Port: 80, NamedPort: "http"}), "q.named_port"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{NamedPort: "HTTP"}), "q.named_port"},
		{NetworkPolicyPort("q", &pb.NetworkPolicyPort{Port: 70000}), "q.port"},
	} {
		if got := prefix(c.err); got != c.want {
			t.Errorf("field %q, want %q (%v)", got, c.want, c.err)
		}
	}
}
