package tests

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/tests/harness"
)

const (
	ppsNodePort = 30201
	ppsSeconds  = 3
	ppsPayload  = 64
)

// ppsYAML is one Service whose only backend (iperf3, TCP control and UDP data on 5201)
// is behind node-2: node-1 forwards every packet.
func ppsYAML(l *harness.NodePortLab) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: pps, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports:
  - {name: ctl, port: 5201, targetPort: 5201, nodePort: %[1]d, protocol: TCP}
  - {name: data, port: 5201, targetPort: 5201, nodePort: %[1]d, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pps-ipv4
  namespace: demo
  labels: {kubernetes.io/service-name: pps}
addressType: IPv4
ports: [{name: ctl, port: 5201, protocol: TCP}, {name: data, port: 5201, protocol: UDP}]
endpoints:
- addresses: ["%[2]s"]
  nodeName: node-2
  conditions: {ready: true}
`, ppsNodePort, l.Pods[1].IPv4)
}

// receivedPPS runs iperf3 over UDP from the client to node-1's NodePort (unlimited
// rate, small datagrams) and returns the datagrams per second the backend received.
func receivedPPS(b *testing.B, l *harness.NodePortLab) float64 {
	b.Helper()
	to := netip.AddrPortFrom(l.Nodes[0].IPv4, ppsNodePort)
	out, err := l.RunProgramE(b, (ppsSeconds+10)*time.Second, l.Client, "iperf3", "-c", to.Addr().String(), "-p", strconv.Itoa(ppsNodePort),
		"-u", "-b", "0", "-l", strconv.Itoa(ppsPayload), "-t", strconv.Itoa(ppsSeconds), "-J", "--connect-timeout", "3000")
	var res struct {
		Error string `json:"error"`
		End   struct {
			Sum struct {
				Seconds float64 `json:"seconds"`
				Packets int64   `json:"packets"`
				Lost    int64   `json:"lost_packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil || res.Error != "" || res.End.Sum.Seconds == 0 {
		b.Fatalf("iperf3 through %s: %v %v %s: %s", to, err, jerr, res.Error, out)
	}
	return float64(res.End.Sum.Packets-res.End.Sum.Lost) / res.End.Sum.Seconds
}

// BenchmarkNodePortPPS: datagrams per second through node-1 to a backend behind node-2,
// over veth, for the same NodePort Service served by sockmesh's XDP program, by its tc
// program alone, and by kube-proxy-style iptables DNAT+MASQUERADE rules, in one lab
// and one run.
func BenchmarkNodePortPPS(b *testing.B) {
	l := harness.NewNodePortLab(b)
	l.PrepareNativeXDP(b) // the same veth path for every mode
	l.StartIperf3(b, l.Pods[1], netip.AddrPortFrom(l.Pods[1].IPv4, 5201))
	yaml := l.WriteFile(b, "pps.yaml", ppsYAML(l))
	node := l.Nodes[0]
	for b.Loop() {
		pps := map[string]float64{}
		for _, xdp := range []string{"off", "native"} {
			a := l.StartNodeAgent(b, node, yaml, "--xdp", xdp)
			mode := map[string]string{"off": "tc", "native": "xdp"}[xdp]
			pps[mode] = receivedPPS(b, l)
			a.Stop(b)
		}
		l.NodeCLI(b, node, "cleanup") // detach every program: iptables alone from here
		rules := [][]string{
			{"-t", "nat", "-A", "PREROUTING", "-d", node.IPv4.String(), "-p", "udp", "--dport", strconv.Itoa(ppsNodePort), "-j", "DNAT", "--to-destination", l.Pods[1].IPv4.String() + ":5201"},
			{"-t", "nat", "-A", "PREROUTING", "-d", node.IPv4.String(), "-p", "tcp", "--dport", strconv.Itoa(ppsNodePort), "-j", "DNAT", "--to-destination", l.Pods[1].IPv4.String() + ":5201"},
			{"-t", "nat", "-A", "POSTROUTING", "-d", l.Pods[1].IPv4.String(), "-j", "MASQUERADE"},
		}
		for _, r := range rules {
			l.RunProgram(b, 10*time.Second, node, "iptables", r...)
		}
		pps["iptables"] = receivedPPS(b, l)
		l.RunProgram(b, 10*time.Second, node, "iptables", "-t", "nat", "-F")
		for mode, v := range pps {
			b.ReportMetric(v, mode+"-pps")
		}
		b.ReportMetric(pps["xdp"]/pps["iptables"], "xdp-vs-iptables-x")
		b.ReportMetric(pps["tc"]/pps["iptables"], "tc-vs-iptables-x")
	}
}
