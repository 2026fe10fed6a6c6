package netlet

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

type pods struct{ pb.UnimplementedPodsServer }

func (pods) AttachPod(_ context.Context, r *pb.AttachPodRequest) (*pb.AttachPodResponse, error) {
	if err := AttachPod(r); err != nil {
		return nil, err
	}
	return &pb.AttachPodResponse{}, nil
}

// A driver served on a real unix socket answers Identity from its declaration, health, and
// field errors with their details; cancelling its context stops it and removes the socket.
func TestServeDeclaresWhatItServes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "go.sock")
	d := &Driver{Name: "gotest", Version: "1.0", Networks: []string{"default"}, Socket: sock, Pods: pods{}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	var conn interface{ Close() error }
	var info *pb.GetInfoResponse
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := Dial(sock)
		if err == nil {
			info, err = pb.NewIdentityClient(c).GetInfo(context.Background(), &pb.GetInfoRequest{})
			if err == nil {
				conn = c
				break
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer conn.Close()
	if info.GetName() != "gotest" || len(info.GetCapabilities()) != 1 ||
		info.GetCapabilities()[0] != pb.Capability_CAPABILITY_PODS ||
		info.GetApiVersions()[0] != "netlet.v1alpha1" {
		t.Fatalf("GetInfo = %v", info)
	}
	c, _ := Dial(sock)
	defer c.Close()
	hs, err := healthpb.NewHealthClient(c).Check(context.Background(),
		&healthpb.HealthCheckRequest{Service: "netlet.v1alpha1.Pods"})
	if err != nil || hs.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", hs, err)
	}
	_, err = pb.NewPodsClient(c).AttachPod(context.Background(), &pb.AttachPodRequest{
		Sandbox: &pb.PodSandbox{Id: "s1", NetnsPath: "relative"},
	})
	if status.Code(err) != codes.InvalidArgument || ErrorField(err) != "sandbox.netns_path" ||
		ErrorReason(err) != ReasonInvalidField {
		t.Fatalf("AttachPod with a relative netns_path: %v (field %q, reason %q)", err, ErrorField(err), ErrorReason(err))
	}
	_, err = pb.NewServicesClient(c).ListServices(context.Background(), &pb.ListServicesRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("an undeclared capability must answer UNIMPLEMENTED, got %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(sock); err == nil {
		if _, err := pb.NewIdentityClient(c).Probe(context.Background(), &pb.ProbeRequest{}); err == nil {
			t.Fatal("still serving after cancel")
		}
	}
}

// The generation rules, row by row as services.proto states them.
func TestGenerationRules(t *testing.T) {
	none := Applied{}
	at := Applied{Epoch: 7, Generation: 10}
	cases := []struct {
		a         Applied
		epoch     uint64
		gen       uint64
		full      bool
		apply     bool
		failField string
	}{
		{none, 0, 1, true, true, ""},
		{at, 8, 1, true, true, ""},
		{at, 0, 99, true, true, ""},
		{at, 7, 10, false, false, ""},
		{at, 7, 10, true, false, ""},
		{at, 7, 9, false, false, "generation"},
		{at, 7, 9, true, false, "generation"},
		{at, 8, 11, false, false, "epoch"},
		{none, 7, 1, false, false, "full_sync"},
		{at, 7, 11, false, true, ""},
	}
	for i, c := range cases {
		apply, err := c.a.Check(c.epoch, c.gen, c.full)
		if c.failField != "" {
			if status.Code(err) != codes.FailedPrecondition || ErrorField(err) != c.failField {
				t.Errorf("case %d: want FAILED_PRECONDITION on %s, got %v", i, c.failField, err)
			}
			continue
		}
		if err != nil || apply != c.apply {
			t.Errorf("case %d: want apply=%v, got %v, %v", i, c.apply, apply, err)
		}
	}
}

func TestValidation(t *testing.T) {
	ok := &pb.AttachPodRequest{
		Sandbox: &pb.PodSandbox{Id: "s1", NetnsPath: "/run/netns/s1",
			PortMappings: []*pb.PortMapping{{HostPort: 0, ContainerPort: 80}}},
		Networks: []*pb.NetworkSelection{{Network: "default", InterfaceName: "eth0", Ips: []string{"10.0.0.5/24"},
			DeviceId: "ens1f0", Routes: []*pb.Route{{Destination: "0.0.0.0/0", Gateway: "10.0.0.1"}, {Destination: "::/0", Gateway: "fe80::1"}}}},
	}
	if err := AttachPod(ok); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	bad := map[string]func(r *pb.AttachPodRequest){
		"sandbox.id":                 func(r *pb.AttachPodRequest) { r.Sandbox.Id = "bad/id" },
		"networks[0].network":        func(r *pb.AttachPodRequest) { r.Networks[0].Network = "Bad_Net" },
		"networks[0].interface_name": func(r *pb.AttachPodRequest) { r.Networks[0].InterfaceName = "much-too-long-ifname" },
		"networks[0].ips[0]":         func(r *pb.AttachPodRequest) { r.Networks[0].Ips = []string{"10.1.2.300"} },
		"networks[0].mac":            func(r *pb.AttachPodRequest) { r.Networks[0].Mac = "01:00:00:00:00:01" },
		"networks[0].mtu":            func(r *pb.AttachPodRequest) { r.Networks[0].Mtu = 10 },
		"networks[0].device_id":      func(r *pb.AttachPodRequest) { r.Networks[0].DeviceId = "Ens1f0" },
		"networks[0].routes[0].destination": func(r *pb.AttachPodRequest) {
			r.Networks[0].Routes = []*pb.Route{{Destination: "10.3.0.0"}}
		},
		"networks[0].routes[0].gateway": func(r *pb.AttachPodRequest) {
			r.Networks[0].Routes = []*pb.Route{{Destination: "fd00::/8", Gateway: "10.0.0.1"}}
		},
		"sandbox.namespace": func(r *pb.AttachPodRequest) { r.Sandbox.Namespace = "Bad_NS" },
		"sandbox.dns_config.nameservers": func(r *pb.AttachPodRequest) {
			r.Sandbox.DnsConfig = &pb.DnsConfig{Nameservers: []string{"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"}}
		},
	}
	for field, mutate := range bad {
		r := &pb.AttachPodRequest{
			Sandbox:  &pb.PodSandbox{Id: "s1", NetnsPath: "/run/netns/s1"},
			Networks: []*pb.NetworkSelection{{Network: "default"}},
		}
		mutate(r)
		if err := AttachPod(r); ErrorField(err) != field {
			t.Errorf("%s: got %v", field, err)
		}
	}
}
