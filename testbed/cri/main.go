// Command cri-probe drives a container runtime over CRI as a kubelet would, for netlet's
// end-to-end tests: it runs, inspects, stops and removes pod sandboxes and prints what the
// kubelet would see as JSON.
//
//	cri-probe --endpoint unix:///run/containerd.sock run --name web --namespace shop \
//	    --uid u1 [--hostport 12000:80/tcp] [--hostname web] [--dns-server 10.96.0.10] \
//	    [--dns-search shop.svc.cluster.local]
//	cri-probe --endpoint ... status|stop|remove SANDBOX_ID
//	cri-probe --endpoint ... version
//	cri-probe --endpoint ... bench --rounds N   (RunPodSandbox, then Stop+Remove, N times;
//	                                             prints the milliseconds of each)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// sandbox is what the kubelet reads back from PodSandboxStatus.
type sandbox struct {
	ID            string   `json:"id"`
	State         string   `json:"state"`
	IP            string   `json:"ip"`
	AdditionalIPs []string `json:"additionalIps"`
	Netns         string   `json:"netns"`
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "cri-probe: "+format+"\n", a...)
	os.Exit(1)
}

func portMapping(s string) *cri.PortMapping {
	proto := cri.Protocol_TCP
	if p, name, ok := strings.Cut(s, "/"); ok {
		s = p
		switch strings.ToLower(name) {
		case "udp":
			proto = cri.Protocol_UDP
		case "sctp":
			proto = cri.Protocol_SCTP
		}
	}
	h, c, ok := strings.Cut(s, ":")
	hp, err1 := strconv.Atoi(h)
	cp, err2 := strconv.Atoi(c)
	if !ok || err1 != nil || err2 != nil {
		fail("--hostport %q: want HOST:CONTAINER[/PROTO]", s)
	}
	return &cri.PortMapping{Protocol: proto, HostPort: int32(hp), ContainerPort: int32(cp)}
}

func status(ctx context.Context, rt cri.RuntimeServiceClient, id string) sandbox {
	st, err := rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		fail("PodSandboxStatus: %v", err)
	}
	s := sandbox{ID: id, State: st.GetStatus().GetState().String()}
	if n := st.GetStatus().GetNetwork(); n != nil {
		s.IP = n.GetIp()
		for _, ip := range n.GetAdditionalIps() {
			s.AdditionalIPs = append(s.AdditionalIPs, ip.GetIp())
		}
	}
	s.Netns = st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork().String()
	return s
}

func main() {
	endpoint := flag.String("endpoint", "", "the runtime's CRI socket, unix:///...")
	timeout := flag.Duration("timeout", 2*time.Minute, "deadline of each call")
	flag.Parse()
	if *endpoint == "" || flag.NArg() < 1 {
		fail("usage: cri-probe --endpoint unix:///SOCK run|status|stop|remove|version ...")
	}
	conn, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("localhost"))
	if err != nil {
		fail("connect %s: %v", *endpoint, err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	out := json.NewEncoder(os.Stdout)
	args := flag.Args()
	switch args[0] {
	case "version":
		v, err := rt.Version(ctx, &cri.VersionRequest{})
		if err != nil {
			fail("Version: %v", err)
		}
		_ = out.Encode(v)
	case "run":
		fs := flag.NewFlagSet("run", flag.ExitOnError)
		name := fs.String("name", "", "pod name")
		ns := fs.String("namespace", "default", "pod namespace")
		uid := fs.String("uid", "", "pod uid")
		hostname := fs.String("hostname", "", "pod hostname")
		var ports, servers, searches list
		fs.Var(&ports, "hostport", "HOST:CONTAINER[/PROTO], repeatable")
		fs.Var(&servers, "dns-server", "name server, repeatable")
		fs.Var(&searches, "dns-search", "search domain, repeatable")
		_ = fs.Parse(args[1:])
		cfg := &cri.PodSandboxConfig{
			Metadata: &cri.PodSandboxMetadata{Name: *name, Namespace: *ns, Uid: *uid},
			Hostname: *hostname,
			DnsConfig: &cri.DNSConfig{
				Servers: servers, Searches: searches, Options: []string{"ndots:5"},
			},
			Labels: map[string]string{"app": *name},
			Linux: &cri.LinuxPodSandboxConfig{
				SecurityContext: &cri.LinuxSandboxSecurityContext{
					NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_POD},
				},
			},
		}
		for _, p := range ports {
			cfg.PortMappings = append(cfg.PortMappings, portMapping(p))
		}
		r, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			fail("RunPodSandbox: %v", err)
		}
		_ = out.Encode(status(ctx, rt, r.GetPodSandboxId()))
	case "bench":
		fs := flag.NewFlagSet("bench", flag.ExitOnError)
		rounds := fs.Int("rounds", 20, "sandboxes made and removed, one after the other")
		prefix := fs.String("prefix", "bench", "pod name prefix")
		_ = fs.Parse(args[1:])
		var res struct {
			RunMs      []float64 `json:"runMs"`
			TeardownMs []float64 `json:"teardownMs"`
		}
		for i := 0; i < *rounds; i++ {
			name := fmt.Sprintf("%s-%d", *prefix, i)
			cfg := &cri.PodSandboxConfig{
				Metadata: &cri.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name},
				Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
					NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_POD}}},
			}
			t0 := time.Now()
			r, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: cfg})
			if err != nil {
				fail("RunPodSandbox %s: %v", name, err)
			}
			t1 := time.Now()
			if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: r.GetPodSandboxId()}); err != nil {
				fail("StopPodSandbox: %v", err)
			}
			if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: r.GetPodSandboxId()}); err != nil {
				fail("RemovePodSandbox: %v", err)
			}
			res.RunMs = append(res.RunMs, float64(t1.Sub(t0).Microseconds())/1000)
			res.TeardownMs = append(res.TeardownMs, float64(time.Since(t1).Microseconds())/1000)
		}
		_ = out.Encode(res)
	case "status":
		_ = out.Encode(status(ctx, rt, args[1]))
	case "stop":
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: args[1]}); err != nil {
			fail("StopPodSandbox: %v", err)
		}
	case "remove":
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: args[1]}); err != nil {
			fail("RemovePodSandbox: %v", err)
		}
	default:
		fail("unknown command %q", args[0])
	}
}
