// Command dra-probe speaks to a DRA driver as the kubelet does, with the kubelet's own
// published client code (k8s.io/kubelet): plugin registration on the driver's registration
// socket, then the DRA plugin service on the endpoint it announced. It prints JSON.
//
//	dra-probe register REG_SOCKET
//	    GetInfo, checked as the kubelet's plugin manager checks it (type DRAPlugin, a DRA
//	    service the kubelet supports), then NotifyRegistrationStatus(registered); prints the
//	    plugin info.
//	dra-probe prepare ENDPOINT NAMESPACE NAME UID
//	dra-probe unprepare ENDPOINT NAMESPACE NAME UID
//	    NodePrepareResources / NodeUnprepareResources for one claim; prints the claim's answer.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// draPluginType is the plugin type the kubelet's plugin watcher routes to its DRA manager
// (pkg/kubelet/pluginmanager: registerapi.DRAPlugin).
const draPluginType = "DRAPlugin"

func dial(socket string) *grpc.ClientConn {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	return conn
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func out(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: dra-probe register SOCKET | prepare|unprepare ENDPOINT NS NAME UID"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch os.Args[1] {
	case "register":
		conn := dial(os.Args[2])
		defer conn.Close()
		c := registration.NewRegistrationClient(conn)
		info, err := c.GetInfo(ctx, &registration.InfoRequest{})
		if err != nil {
			fail(err)
		}
		// What the kubelet's DRA manager accepts (pkg/kubelet/cm/dra/plugin).
		supported := []string{drav1.DRAPluginService, drav1beta1.DRAPluginService}
		ok := info.Type == draPluginType && slices.ContainsFunc(info.SupportedVersions, func(v string) bool {
			return slices.Contains(supported, v)
		})
		msg := ""
		if !ok {
			msg = fmt.Sprintf("type %q, services %q: the kubelet supports %q", info.Type, info.SupportedVersions, supported)
		}
		if _, err := c.NotifyRegistrationStatus(ctx, &registration.RegistrationStatus{PluginRegistered: ok, Error: msg}); err != nil {
			fail(err)
		}
		out(map[string]any{"type": info.Type, "name": info.Name, "endpoint": info.Endpoint,
			"supportedVersions": info.SupportedVersions, "accepted": ok, "error": msg})
	case "prepare", "unprepare":
		if len(os.Args) != 6 {
			fail(fmt.Errorf("usage: dra-probe %s ENDPOINT NS NAME UID", os.Args[1]))
		}
		conn := dial(os.Args[2])
		defer conn.Close()
		c := drav1.NewDRAPluginClient(conn)
		claim := &drav1.Claim{Namespace: os.Args[3], Name: os.Args[4], UID: os.Args[5]}
		if os.Args[1] == "prepare" {
			r, err := c.NodePrepareResources(ctx, &drav1.NodePrepareResourcesRequest{Claims: []*drav1.Claim{claim}})
			if err != nil {
				fail(err)
			}
			a := r.Claims[claim.UID]
			if a == nil {
				fail(fmt.Errorf("no answer for claim %s", claim.UID))
			}
			devices := []map[string]any{}
			for _, d := range a.Devices {
				devices = append(devices, map[string]any{"requestNames": d.RequestNames, "pool": d.PoolName,
					"device": d.DeviceName, "cdiDeviceIds": d.CDIDeviceIDs})
			}
			out(map[string]any{"devices": devices, "error": a.Error})
		} else {
			r, err := c.NodeUnprepareResources(ctx, &drav1.NodeUnprepareResourcesRequest{Claims: []*drav1.Claim{claim}})
			if err != nil {
				fail(err)
			}
			a := r.Claims[claim.UID]
			if a == nil {
				fail(fmt.Errorf("no answer for claim %s", claim.UID))
			}
			out(map[string]any{"error": a.Error})
		}
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
