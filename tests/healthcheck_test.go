package tests

import (
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// healthCheckYAML is a LoadBalancer Service with externalTrafficPolicy Local and health
// check port hc, and one endpoint on node with the given conditions.
func healthCheckYAML(hc int, node, conditions string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: shop, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: %[1]s
  externalTrafficPolicy: Local
  healthCheckNodePort: %[2]d
  ports:
  - {name: http, port: 80, targetPort: %[3]d, nodePort: 30080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-ipv4
  namespace: demo
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports:
- {name: http, port: %[3]d, protocol: TCP}
endpoints:
- addresses: ["10.244.0.5"]
  nodeName: %[4]s
  conditions: %[5]s
`, netlab.ClusterIPv4, hc, netlab.BackendTCPPort, node, conditions)
}

// The agent serves a LoadBalancer Service's healthCheckNodePort as kube-proxy does, and
// curl, as a cloud load balancer's probe, reads it: 200 while this node has a ready
// endpoint of the Service, 503 once it has only a terminating one or one on another
// node, and nothing once the Service is gone.
func TestHealthCheckNodePortWithCurl(t *testing.T) {
	harness.RequirePrivileged(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl not installed (scripts/install-deps.sh installs it)")
	}
	env := harness.NewEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hc := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	const node = "smt-hc-node"
	path := env.WriteFile(t, "svc.yaml", healthCheckYAML(hc, node, "{ready: true}"))
	agent := env.StartAgent(t, path, "--node-name", node, "--health-check-bind-address", "127.0.0.1")

	url := fmt.Sprintf("http://127.0.0.1:%d/", hc)
	probe := func() string {
		out, _ := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url).Output()
		return string(out)
	}
	waitFor := func(what, code string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		got := probe()
		for got != code && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			got = probe()
		}
		if got != code {
			t.Fatalf("%s: curl %s gave %q, want %s\nagent log:\n%s", what, url, got, code, agent.Log())
		}
	}
	waitFor("one ready local endpoint", "200")
	body, err := exec.Command(curl, "-s", url).Output()
	if err != nil || string(body) != "{\n  \"service\": {\n    \"namespace\": \"demo\",\n    \"name\": \"shop\"\n  },\n  \"localEndpoints\": 1,\n  \"serviceProxyHealthy\": true\n}\n" {
		t.Fatalf("body %q, %v", body, err)
	}
	env.WriteFile(t, "svc.yaml", healthCheckYAML(hc, node, "{ready: false, serving: true, terminating: true}"))
	waitFor("the local endpoint terminating", "503")
	env.WriteFile(t, "svc.yaml", healthCheckYAML(hc, "another-node", "{ready: true}"))
	waitFor("the endpoint on another node", "503")
	env.WriteFile(t, "svc.yaml", "apiVersion: v1\nkind: List\nitems: []\n")
	waitFor("the Service deleted", "000") // curl's code when nothing answers
}
