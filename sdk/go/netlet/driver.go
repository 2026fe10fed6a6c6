package netlet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

// APIVersion is the proto package this SDK speaks, as GetInfo lists it.
const APIVersion = "netlet.v1alpha1"

// SocketEnv is the variable through which the host tells a supervised driver its socket path.
const SocketEnv = "NETLET_DRIVER_SOCKET"

// StateDirEnv is the variable through which the host gives a supervised driver a state
// directory of its own.
const StateDirEnv = "NETLET_DRIVER_STATE_DIR"

// DefaultMaxMessageBytes is the largest message served or accepted unless set: 16 MiB, as the
// host's own limit (the host never sends more than 4 MiB in one message).
const DefaultMaxMessageBytes = 16 << 20

// Readiness is what Probe answers: whether the driver can serve its capabilities now.
type Readiness struct {
	Ready   bool
	Reason  string // CamelCase, when not ready
	Message string
}

// Driver declares a driver: who it is, the networks it attaches pods to, and one server per
// capability it serves (nil: not served, and GetInfo does not list it).
type Driver struct {
	Name     string // a DNS-1123 label
	Version  string
	Networks []string
	// Socket to bind; empty: $NETLET_DRIVER_SOCKET (supervised drivers). An external driver
	// binds <plugin dir>/<Name>.sock.
	Socket string
	// Features are the optional features the driver has (GetInfo lists exactly these; the host
	// refuses requests needing one it lacks).
	Features []pb.Feature
	// Probe decides readiness; nil: always ready.
	Probe           func(context.Context) Readiness
	Pods            pb.PodsServer
	Node            pb.NodeServer
	Services        pb.ServicesServer
	Policy          pb.PolicyServer
	Devices         pb.DevicesServer
	MaxMessageBytes int
}

type identity struct {
	pb.UnimplementedIdentityServer
	d *Driver
}

func (i identity) GetInfo(context.Context, *pb.GetInfoRequest) (*pb.GetInfoResponse, error) {
	return &pb.GetInfoResponse{
		Name:          i.d.Name,
		VendorVersion: i.d.Version,
		ApiVersions:   []string{APIVersion},
		Capabilities:  i.d.capabilities(),
		Services:      i.d.serviceNames(),
		Networks:      i.d.Networks,
		Role:          pb.EndpointRole_ENDPOINT_ROLE_DRIVER,
		Features:      &pb.Features{Supported: i.d.Features},
	}, nil
}

func (i identity) Probe(ctx context.Context, _ *pb.ProbeRequest) (*pb.ProbeResponse, error) {
	r := Readiness{Ready: true}
	if i.d.Probe != nil {
		r = i.d.Probe(ctx)
	}
	return &pb.ProbeResponse{Ready: r.Ready, Reason: r.Reason, Message: r.Message}, nil
}

func (d *Driver) capabilities() []pb.Capability {
	var c []pb.Capability
	if d.Node != nil {
		c = append(c, pb.Capability_CAPABILITY_NODE)
	}
	if d.Pods != nil {
		c = append(c, pb.Capability_CAPABILITY_PODS)
	}
	if d.Services != nil {
		c = append(c, pb.Capability_CAPABILITY_SERVICES)
	}
	if d.Policy != nil {
		c = append(c, pb.Capability_CAPABILITY_POLICY)
	}
	if d.Devices != nil {
		c = append(c, pb.Capability_CAPABILITY_DEVICES)
	}
	return c
}

func (d *Driver) serviceNames() []string {
	names := []string{pb.Identity_ServiceDesc.ServiceName}
	for _, s := range []struct {
		on   bool
		name string
	}{
		{d.Node != nil, pb.Node_ServiceDesc.ServiceName},
		{d.Pods != nil, pb.Pods_ServiceDesc.ServiceName},
		{d.Services != nil, pb.Services_ServiceDesc.ServiceName},
		{d.Policy != nil, pb.Policy_ServiceDesc.ServiceName},
		{d.Devices != nil, pb.Devices_ServiceDesc.ServiceName},
	} {
		if s.on {
			names = append(names, s.name)
		}
	}
	return names
}

// Listen binds the driver's unix socket, removing a stale one, with mode 0660.
func (d *Driver) Listen() (net.Listener, error) {
	path := d.Socket
	if path == "" {
		path = os.Getenv(SocketEnv)
	}
	if path == "" {
		return nil, fmt.Errorf("no socket path: set Driver.Socket or $%s", SocketEnv)
	}
	d.Socket = path
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("socket %s: removing the stale one: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}

// Serve serves the driver until ctx ends or SIGTERM/SIGINT arrives, then stops gracefully
// (in-flight calls finish, for at most 5 s) and removes the socket.
func (d *Driver) Serve(ctx context.Context) error {
	l, err := d.Listen()
	if err != nil {
		return err
	}
	defer os.Remove(d.Socket)
	max := d.MaxMessageBytes
	if max == 0 {
		max = DefaultMaxMessageBytes
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(max), grpc.MaxSendMsgSize(max))
	pb.RegisterIdentityServer(s, identity{d: d})
	if d.Node != nil {
		pb.RegisterNodeServer(s, d.Node)
	}
	if d.Pods != nil {
		pb.RegisterPodsServer(s, d.Pods)
	}
	if d.Services != nil {
		pb.RegisterServicesServer(s, d.Services)
	}
	if d.Policy != nil {
		pb.RegisterPolicyServer(s, d.Policy)
	}
	if d.Devices != nil {
		pb.RegisterDevicesServer(s, d.Devices)
	}
	h := health.NewServer()
	for _, name := range append([]string{""}, d.serviceNames()...) {
		h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s, h)
	reflection.Register(s)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	h.Shutdown()
	stopped := make(chan struct{})
	go func() { s.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		s.Stop()
	}
	return nil
}

// Dial connects to a netlet endpoint (the host or a driver) on a unix socket.
func Dial(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes)))
}
