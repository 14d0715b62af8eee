package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver: a real, independent xDS client

	"github.com/sockmesh/sockmesh/internal/netlab"
)

// GRPCPort is where the gRPC backends listen.
const GRPCPort = 9090

func init() { extraOps["grpc-xds"] = grpcXDSClient }

// StartGRPCBackends serves the standard gRPC health service in each host's namespace.
func (e *Env) StartGRPCBackends(t testing.TB, hosts ...*netlab.Host) {
	t.Helper()
	for _, h := range hosts {
		var ln net.Listener
		if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", GRPCPort)); return }); err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(srv.Stop)
	}
}

// GRPCResult is which backend answered each RPC.
type GRPCResult struct {
	Peers  map[string]int
	Errors []string
}

// XDSBootstrapEnv is the environment that points a grpc-go client's xds resolver at
// the agent's socket (grpc reads it when the package initialises).
func XDSBootstrapEnv(socket, nodeID string) string {
	return "GRPC_XDS_BOOTSTRAP_CONFIG=" + fmt.Sprintf(
		`{"xds_servers":[{"server_uri":"unix://%s","channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"%s"}}`, socket, nodeID)
}

// grpcXDSClient: N health checks to xds:///Args[0], each telling which backend answered.
// The first failure ends the run: a broken resolver would otherwise wait N times.
func grpcXDSClient(req ClientRequest) error {
	cc, err := grpc.NewClient("xds:///"+req.Args[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	res := GRPCResult{Peers: map[string]int{}}
	client := healthpb.NewHealthClient(cc)
	for i := 0; i < req.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var p peer.Peer
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			break
		}
		host, _, _ := net.SplitHostPort(p.Addr.String())
		res.Peers[host]++
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
