package netlab

import (
	"fmt"
	"net/netip"
	"strings"
)

// The demo's service addresses: never routed anywhere, only translated.
var (
	ClusterIPv4 = netip.MustParseAddr("10.96.0.10")
	ClusterIPv6 = netip.MustParseAddr("fd00:96::10")
)

// Ports of the demo's service and of its backends.
const (
	ServiceHTTPPort = 80
	BackendTCPPort  = 8080
	DNSPort         = 53
)

// ServiceYAML renders the demo's Service and EndpointSlices (one per family) for the
// given backends, in the same format a user feeds `--source file:PATH`.
func ServiceYAML(ns, name string, backends []*Host) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  type: ClusterIP
  clusterIP: %[3]s
  clusterIPs: [%[3]s, "%[4]s"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: http, port: %[5]d, targetPort: %[6]d, protocol: TCP}
  - {name: dns, port: %[7]d, targetPort: %[7]d, protocol: UDP}
`, ns, name, ClusterIPv4, ClusterIPv6, ServiceHTTPPort, BackendTCPPort, DNSPort)
	for _, fam := range []string{"IPv4", "IPv6"} {
		fmt.Fprintf(&b, `---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[2]s-%[3]s
  namespace: %[1]s
  labels: {kubernetes.io/service-name: %[2]s}
addressType: %[4]s
ports:
- {name: http, port: %[5]d, protocol: TCP}
- {name: dns, port: %[6]d, protocol: UDP}
endpoints:
`, ns, name, strings.ToLower(fam), fam, BackendTCPPort, DNSPort)
		for _, h := range backends {
			addr := h.IPv4
			if fam == "IPv6" {
				addr = h.IPv6
			}
			fmt.Fprintf(&b, "- addresses: [\"%s\"]\n  conditions: {ready: true}\n", addr)
		}
	}
	return b.String()
}
