package tests

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The lab's Services (see harness.NodePortLab): web has a backend behind every node and
// is reached at its NodePorts, an externalIP and a LoadBalancer IP; local has
// externalTrafficPolicy Local and its one endpoint behind node-2; ranged admits only the
// client's address; far asks for a NodePort outside the node's range.
const (
	npWebHTTP   = 30080
	npWebDNS    = 30053
	npWebLine   = 30088
	npLocalHTTP = 30081
	npLocalHC   = 30999
	npRanged    = 30082
	npFar       = 20080
)

func nodePortYAML(l *harness.NodePortLab) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [%[1]s]
  ports:
  - {name: http, port: 80, targetPort: 80, nodePort: %[3]d, protocol: TCP}
  - {name: dns, port: 53, targetPort: 53, nodePort: %[4]d, protocol: UDP}
  - {name: line, port: 8080, targetPort: 8080, nodePort: %[5]d, protocol: TCP}
status:
  loadBalancer:
    ingress: [{ip: %[2]s}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.11
  externalTrafficPolicy: Local
  healthCheckNodePort: %[6]d
  ports:
  - {name: http, port: 80, targetPort: 80, nodePort: %[7]d, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: ranged, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.12
  loadBalancerSourceRanges: ["%[8]s/32"]
  ports:
  - {name: http, port: 80, targetPort: 80, nodePort: %[9]d, protocol: TCP}
status:
  loadBalancer:
    ingress: [{ip: %[10]s}]
---
apiVersion: v1
kind: Service
metadata: {name: far, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.13
  ports:
  - {name: http, port: 80, targetPort: 80, nodePort: %[11]d, protocol: TCP}
`, harness.ExternalIPs[0], harness.ExternalIPs[1], npWebHTTP, npWebDNS, npWebLine, npLocalHC, npLocalHTTP,
		l.Client.IPv4, npRanged, harness.ExternalIPs[2], npFar)
	slice := func(svc, family string, pods []*netlab.Host, ports string) {
		fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-%s\n  namespace: demo\n  labels: {kubernetes.io/service-name: %s}\naddressType: %s\nports: %s\nendpoints:\n",
			svc, strings.ToLower(family), svc, family, ports)
		for i, pod := range pods {
			addr := pod.IPv4
			if family == "IPv6" {
				addr = pod.IPv6
			}
			fmt.Fprintf(&b, "- addresses: [\"%s\"]\n  nodeName: node-%s\n  conditions: {ready: true}\n", addr, strings.TrimPrefix(pods[i].Name, "pod-"))
		}
	}
	webPorts := "[{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}, {name: line, port: 8080, protocol: TCP}]"
	slice("web", "IPv4", l.Pods, webPorts)
	slice("web", "IPv6", l.Pods, webPorts)
	httpPort := "[{name: http, port: 80, protocol: TCP}]"
	slice("local", "IPv4", l.Pods[1:2], httpPort)
	slice("ranged", "IPv4", l.Pods[2:3], httpPort)
	slice("far", "IPv4", l.Pods, httpPort)
	return b.String()
}

// startPods runs in every pod nginx on port 80, answering with the pod's name and the
// client address it saw, and the demo's line (8080) and DNS (53) servers.
func startPods(t *testing.T, l *harness.NodePortLab) {
	for _, pod := range l.Pods {
		l.StartNginx(t, pod, netip.AddrPortFrom(pod.IPv4, 80), fmt.Sprintf(`server {
		listen 80;
		listen [::]:80;
		location / { return 200 "%s saw $remote_addr\n"; }
	}`, pod.Name))
		l.StartServers(t, pod)
	}
}

// curlFrom runs curl in h against url; it returns what the pod answered.
func curlFrom(t *testing.T, l *harness.NodePortLab, h *netlab.Host, url string) (string, error) {
	t.Helper()
	out, err := l.RunProgramE(t, 15*time.Second, h, "curl", "-sS", "-g", "--max-time", "3", url)
	return strings.TrimSpace(out), err
}

// checkSNATAnswer checks one answer through node: a pod behind another node saw the
// node's address (SNAT), the pod behind node itself saw the client.
func checkSNATAnswer(t *testing.T, l *harness.NodePortLab, node *netlab.Host, client netip.Addr, answer string) (remote bool) {
	t.Helper()
	pod, saw, ok := strings.Cut(answer, " saw ")
	if !ok {
		t.Fatalf("answer %q is no pod's", answer)
	}
	local := "pod-" + strings.TrimPrefix(node.Name, "node-")
	want := node.IPv4
	if client.Is6() {
		want = node.IPv6
	}
	if pod == local {
		want = client
	}
	if got, err := netip.ParseAddr(saw); err != nil || got.Unmap() != want {
		t.Fatalf("%s saw %s, want %s (SNAT for pods behind other nodes, the client for the node's own)", pod, saw, want)
	}
	return pod != local
}

func urlOf(ap netip.AddrPort) string { return "http://" + ap.String() + "/" }

// TestNodePortSNATServesEveryFrontendKind: curl from outside reaches a Service at its
// NodePort (IPv4 and IPv6), externalIP and LoadBalancer IP through node-1, in tc alone
// and with native XDP in front; backends behind other nodes see node-1 (SNAT) and
// answer through it; a DNS query over UDP gets its answer from the address it asked.
func TestNodePortSNATServesEveryFrontendKind(t *testing.T) {
	for _, xdp := range []string{"off", "native"} {
		t.Run("xdp-"+xdp, func(t *testing.T) {
			l := harness.NewNodePortLab(t)
			if xdp == "native" {
				l.PrepareNativeXDP(t)
			}
			startPods(t, l)
			yaml := l.WriteFile(t, "services.yaml", nodePortYAML(l))
			var agents []*harness.Agent
			for _, node := range l.Nodes {
				agents = append(agents, l.StartNodeAgent(t, node, yaml, "--xdp", xdp))
			}
			node := l.Nodes[0]
			frontends := []netip.AddrPort{
				netip.AddrPortFrom(node.IPv4, npWebHTTP),
				netip.AddrPortFrom(node.IPv6, npWebHTTP),
				netip.AddrPortFrom(harness.ExternalIPs[0], 80),
				netip.AddrPortFrom(harness.ExternalIPs[1], 80),
			}
			for _, fe := range frontends {
				client := l.Client.IPv4
				if fe.Addr().Is6() {
					client = l.Client.IPv6
				}
				remote := 0
				for range 12 {
					out, err := curlFrom(t, l, l.Client, urlOf(fe))
					if err != nil {
						t.Fatalf("curl %s: %v\nnode-1 counters: %s", fe, err, nodePortCounters(t, agents[0]))
					}
					if checkSNATAnswer(t, l, node, client, out) {
						remote++
					}
				}
				if remote == 0 {
					t.Fatalf("12 requests to %s never reached a pod behind another node", fe)
				}
			}
			for _, fe := range []netip.AddrPort{netip.AddrPortFrom(node.IPv4, npWebDNS), netip.AddrPortFrom(node.IPv6, npWebDNS)} {
				var ans netlab.DNSAnswer
				err := l.Client.Do(func() error {
					var err error
					ans, err = netlab.QueryDNS(fe)
					return err
				})
				if err != nil {
					t.Fatalf("DNS over UDP to %s: %v", fe, err)
				}
				if !strings.HasPrefix(ans.Backend, "pod-") || ans.From.Addr().Unmap() != fe.Addr() || ans.From.Port() != fe.Port() {
					t.Fatalf("DNS to %s: answer %+v, want a pod's name from %s", fe, ans, fe)
				}
			}
			// On the node itself, socket-LB serves its own NodePort address: from a
			// pod, and from the node's namespace (a hostNetwork client).
			for _, h := range []*netlab.Host{l.Pods[0], node} {
				out, err := l.RunOnNode(t, node, h, 15*time.Second, "curl", "-sS", "--max-time", "3", urlOf(netip.AddrPortFrom(node.IPv4, npWebHTTP)))
				if err != nil || !strings.Contains(out, " saw ") {
					t.Fatalf("curl to node-1's own NodePort from %s on node-1: %q, %v", h.Name, out, err)
				}
			}
			listed := l.NodeCLI(t, node, "lb", "list")
			for _, want := range []string{"0.0.0.0:30080/TCP (NodePort)", "[::]:30053/UDP (NodePort)", "192.0.2.7:80/TCP (ExternalIP)", "192.0.2.8:80/TCP (LoadBalancer)", "10.96.0.10:80/TCP "} {
				if !strings.Contains(listed, want) {
					t.Fatalf("lb list on node-1 lacks %q:\n%s", want, listed)
				}
			}
			prog := "tc_ingress"
			if xdp == "native" {
				prog = "xdp"
			}
			if n := agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": prog, "action": "new_flow"}); n < float64(len(frontends)) {
				t.Fatalf("%s counted %v new flows on node-1, want at least %d", prog, n, len(frontends))
			}
			if n := agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": "tc_egress", "action": "reply"}) +
				agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": prog, "action": "reply"}); n == 0 {
				t.Fatal("node-1 translated no replies")
			}
		})
	}
}

// TestNodePortTrafficPolicyRangesAndBadInput: externalTrafficPolicy Local is served
// only by the node with the endpoint, whose health check port says 200 while the
// others say 503; loadBalancerSourceRanges admit the client and drop the outsider; a
// NodePort outside the range and a device that does not exist are reported, a device
// without native XDP runs it generic, and everything else is served.
func TestNodePortTrafficPolicyRangesAndBadInput(t *testing.T) {
	l := harness.NewNodePortLab(t)
	l.PrepareNativeXDP(t)
	startPods(t, l)
	// A bridge device has no native XDP: node-1's agent falls back to generic there.
	if err := l.Nodes[0].Do(func() error { return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-np"}}) }); err != nil {
		t.Fatal(err)
	}
	yaml := l.WriteFile(t, "services.yaml", nodePortYAML(l))
	var agents []*harness.Agent
	for _, node := range l.Nodes {
		agents = append(agents, l.StartNodeAgent(t, node, yaml, "--devices", "eth0,nosuch0,br-np", "--xdp", "native"))
	}
	agents[0].WaitLog(t, "native XDP on br-np failed", "generic XDP instead")

	// externalTrafficPolicy Local: node-2 has the endpoint, and the pod sees the client.
	out, err := curlFrom(t, l, l.Client, urlOf(netip.AddrPortFrom(l.Nodes[1].IPv4, npLocalHTTP)))
	if err != nil || out != "pod-2 saw "+l.Client.IPv4.String() {
		t.Fatalf("externalTrafficPolicy Local via node-2: %q, %v; want pod-2 seeing the client", out, err)
	}
	for _, node := range []*netlab.Host{l.Nodes[0], l.Nodes[2]} {
		if out, err := curlFrom(t, l, l.Client, urlOf(netip.AddrPortFrom(node.IPv4, npLocalHTTP))); err == nil {
			t.Fatalf("externalTrafficPolicy Local via %s (no local endpoint) answered %q", node.Name, out)
		}
	}
	for i, node := range l.Nodes {
		code, err := l.RunProgramE(t, 15*time.Second, l.Client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
			urlOf(netip.AddrPortFrom(node.IPv4, npLocalHC)))
		want := "503"
		if i == 1 {
			want = "200"
		}
		if err != nil && want == "200" || code != want {
			t.Fatalf("health check port of %s: %q (%v), want %s", node.Name, code, err, want)
		}
	}
	if n := agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"action": "drop_no_backend"}); n == 0 {
		t.Fatal("node-1 dropped no packet for want of a local endpoint")
	}

	// loadBalancerSourceRanges: the client is in them, the outsider is not.
	ranged := urlOf(netip.AddrPortFrom(harness.ExternalIPs[2], 80))
	if out, err := curlFrom(t, l, l.Client, ranged); err != nil || !strings.HasPrefix(out, "pod-3 saw ") {
		t.Fatalf("client inside loadBalancerSourceRanges: %q, %v", out, err)
	}
	if out, err := curlFrom(t, l, l.Outsider, ranged); err == nil {
		t.Fatalf("outsider outside loadBalancerSourceRanges was served: %q", out)
	}
	if n := agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"action": "drop_source_range"}); n == 0 {
		t.Fatal("node-1 counted no source-range drop")
	}

	// Bad input: the NodePort outside the range and the missing device are reported by
	// name; the rest (above, and the far Service's cluster IP programmed) works.
	if n := agents[0].Metric(t, "sockmesh_rejected_objects", map[string]string{"kind": "Service", "reason": "node_port_out_of_range"}); n != 1 {
		t.Fatalf("node_port_out_of_range reported %v times, want 1", n)
	}
	if n := agents[0].Metric(t, "sockmesh_rejected_objects", map[string]string{"kind": "Device", "reason": "device_not_found"}); n != 1 {
		t.Fatalf("device_not_found reported %v times, want 1", n)
	}
	agents[0].WaitLog(t, "nosuch0", "node_port_out_of_range")
	if _, err := curlFrom(t, l, l.Client, urlOf(netip.AddrPortFrom(l.Nodes[0].IPv4, npFar))); err == nil {
		t.Fatal("a NodePort outside --node-port-range was served")
	}
}

// nodePortCounters lists an agent's non-zero NodePort packet counters, for failures.
func nodePortCounters(t *testing.T, a *harness.Agent) string {
	var out []string
	if fam := a.Metrics(t)["sockmesh_nodeport_packets_total"]; fam != nil {
		for _, m := range fam.Metric {
			if v := m.GetCounter().GetValue(); v != 0 {
				out = append(out, fmt.Sprintf("%s/%s=%v", m.Label[1].GetValue(), m.Label[0].GetValue(), v))
			}
		}
	}
	return strings.Join(out, " ")
}

// TestNodePortSurvivesAgentRestartUnderLoad, in snat and dsr mode: while curl keeps
// asking through node-1's NodePort and a line connection stays open across it, node-1's
// agent is stopped and started again. Every request is answered, the open connection keeps its backend (the
// conntrack entries live in the pins), and the new agent rewrites no entry.
func TestNodePortSurvivesAgentRestartUnderLoad(t *testing.T) {
	for _, mode := range []string{"snat", "dsr"} {
		t.Run(mode, func(t *testing.T) { testRestartUnderLoad(t, mode) })
	}
}

func testRestartUnderLoad(t *testing.T, mode string) {
	l := harness.NewNodePortLab(t)
	startPods(t, l)
	yaml := l.WriteFile(t, "services.yaml", nodePortYAML(l))
	var agents []*harness.Agent
	for _, node := range l.Nodes {
		agents = append(agents, l.StartNodeAgent(t, node, yaml, "--nodeport-mode", mode))
	}
	node := l.Nodes[0]
	line := netip.AddrPortFrom(node.IPv4, npWebLine)
	var conn *net.TCPConn
	var first netlab.TCPAnswer
	if err := l.Client.Do(func() error {
		var err error
		conn, first, err = netlab.DialTCP(line)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", line, err)
	}
	defer conn.Close()

	stop := make(chan struct{})
	done := make(chan []string)
	go func() {
		var failures []string
		url := urlOf(netip.AddrPortFrom(node.IPv4, npWebHTTP))
		for n := 0; n < 400; n++ {
			select {
			case <-stop:
				done <- failures
				return
			default:
			}
			if out, err := curlFrom(t, l, l.Client, url); err != nil || !strings.Contains(out, " saw ") {
				failures = append(failures, fmt.Sprintf("%q %v", out, err))
			}
		}
		done <- failures
	}()
	agents[0].Stop(t)
	if name, err := netlab.Ask(conn); err != nil || name != first.Backend {
		t.Fatalf("with the agent stopped the open connection answered %q, %v; want %s", name, err, first.Backend)
	}
	restarted := l.StartNodeAgent(t, node, yaml, "--nodeport-mode", mode)
	if name, err := netlab.Ask(conn); err != nil || name != first.Backend {
		t.Fatalf("after the restart the open connection answered %q, %v; want %s", name, err, first.Backend)
	}
	close(stop)
	if failures := <-done; len(failures) > 0 {
		t.Fatalf("%d requests failed across the restart: %v", len(failures), failures)
	}
	// ct list shows the open connection, SNATed to node-1, read from the pins.
	pod := l.Pods[strings.TrimPrefix(first.Backend, "pod-")[0]-'1']
	row := fmt.Sprintf("TCP    %s", netip.AddrPortFrom(l.Client.IPv4, conn.LocalAddr().(*net.TCPAddr).AddrPort().Port()))
	flows := l.NodeCLI(t, node, "ct", "list")
	if !strings.Contains(flows, row) || !strings.Contains(flows, netip.AddrPortFrom(pod.IPv4, 8080).String()) || !strings.Contains(flows, node.IPv4.String()+":") {
		t.Fatalf("ct list lacks the open connection %s -> %s -> %s:\n%s", row, line, pod.Name, flows)
	}
	if n := restarted.Metric(t, "sockmesh_map_ops_total", map[string]string{"op": "update", "result": "ok"}); n != 0 {
		t.Fatalf("the restarted agent wrote %v map entries over the pins, want 0", n)
	}
	if n := restarted.Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": "tc_ingress", "action": "forward"}); n == 0 {
		t.Fatal("no packet of a tracked flow passed node-1")
	}
}

// TestNodePortDSRRepliesSkipTheEntryNode: with --nodeport-mode dsr every pod sees the
// client's address (IPv4 and IPv6), and the replies of pods behind node-2 and node-3
// leave from their nodes straight to the client (their egress translates them; node-1's
// ingress never sees one). hybrid does the same for TCP and keeps UDP on SNAT, whose
// replies come back through node-1.
func TestNodePortDSRRepliesSkipTheEntryNode(t *testing.T) {
	for _, mode := range []string{"dsr", "hybrid"} {
		t.Run(mode, func(t *testing.T) {
			l := harness.NewNodePortLab(t)
			startPods(t, l)
			yaml := l.WriteFile(t, "services.yaml", nodePortYAML(l))
			var agents []*harness.Agent
			for _, node := range l.Nodes {
				agents = append(agents, l.StartNodeAgent(t, node, yaml, "--nodeport-mode", mode))
			}
			node := l.Nodes[0]
			// Every frontend kind: the NodePort of both families, the externalIP and the
			// LoadBalancer IP (routed to node-1).
			for _, family := range []struct {
				frontend netip.AddrPort
				client   netip.Addr
			}{
				{netip.AddrPortFrom(node.IPv4, npWebHTTP), l.Client.IPv4},
				{netip.AddrPortFrom(node.IPv6, npWebHTTP), l.Client.IPv6},
				{netip.AddrPortFrom(harness.ExternalIPs[0], 80), l.Client.IPv4},
				{netip.AddrPortFrom(harness.ExternalIPs[1], 80), l.Client.IPv4},
			} {
				remote := 0
				for range 12 {
					out, err := curlFrom(t, l, l.Client, urlOf(family.frontend))
					if err != nil {
						t.Fatalf("curl: %v\nnode-1: %s\nnode-2: %s", err, nodePortCounters(t, agents[0]), nodePortCounters(t, agents[1]))
					}
					pod, saw, _ := strings.Cut(out, " saw ")
					if got, err := netip.ParseAddr(saw); err != nil || got != family.client {
						t.Fatalf("%s saw %s, want the client %s (DSR)", pod, saw, family.client)
					}
					if pod != "pod-1" {
						remote++
					}
				}
				if remote == 0 {
					t.Fatalf("12 requests to %s never reached a pod behind another node", family.frontend)
				}
			}
			if n := agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"action": "reply", "program": "tc_ingress"}); n != 0 {
				t.Fatalf("%v replies of DSR flows came back through node-1", n)
			}
			v4Replies := func() float64 {
				return agents[0].Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": "tc_ingress", "action": "reply"})
			}
			before := v4Replies()
			var ans netlab.DNSAnswer
			dns := netip.AddrPortFrom(node.IPv4, npWebDNS)
			// Until a pod behind another node answers (node-1's own answers on egress).
			for range 12 {
				if err := l.Client.Do(func() error { var err error; ans, err = netlab.QueryDNS(dns); return err }); err != nil || ans.From.Addr().Unmap() != dns.Addr() || ans.From.Port() != dns.Port() {
					t.Fatalf("DNS to %s: %+v, %v", dns, ans, err)
				}
				if ans.Backend != "pod-1" {
					break
				}
			}
			if ans.Backend == "pod-1" {
				t.Fatal("12 DNS queries never reached a pod behind another node")
			}
			udpBack := v4Replies() - before
			learned, answered := 0.0, 0.0
			for _, a := range agents[1:] {
				learned += a.Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": "tc_ingress", "action": "dsr_learned"})
				answered += a.Metric(t, "sockmesh_nodeport_packets_total", map[string]string{"program": "tc_egress", "action": "reply"})
			}
			if learned == 0 || answered == 0 {
				t.Fatalf("node-2 and node-3 learned %v DSR flows and answered %v packets, want some of each", learned, answered)
			}
			// Node-1's ingress translates the UDP replies only in hybrid mode (SNAT).
			switch {
			case mode == "dsr" && udpBack != 0:
				t.Fatalf("dsr: %v UDP replies came back through node-1", udpBack)
			case mode == "hybrid" && udpBack == 0:
				t.Fatal("hybrid: the UDP reply did not come back through node-1 (SNAT)")
			}
		})
	}
}

// TestNodePortNetlinkTCFilters: with --tc-attach netlink (what a kernel without TCX
// gets) the tc programs are clsact filters: they serve, stay while the agent is away,
// and `sockmesh cleanup` removes them.
func TestNodePortNetlinkTCFilters(t *testing.T) {
	l := harness.NewNodePortLab(t)
	startPods(t, l)
	yaml := l.WriteFile(t, "services.yaml", nodePortYAML(l))
	node := l.Nodes[0]
	a := l.StartNodeAgent(t, node, yaml, "--tc-attach", "netlink")
	filters := func() []string {
		var names []string
		err := node.Do(func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
				fs, err := netlink.FilterList(eth, parent)
				if err != nil {
					return err
				}
				for _, f := range fs {
					if bf, ok := f.(*netlink.BpfFilter); ok {
						names = append(names, bf.Name)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	if got := strings.Join(filters(), ","); got != "sockmesh-np-ingress,sockmesh-np-egress" {
		t.Fatalf("tc filters on node-1's eth0: %q", got)
	}
	url := urlOf(netip.AddrPortFrom(node.IPv4, npWebHTTP))
	if out, err := curlFrom(t, l, l.Client, url); err != nil || !strings.Contains(out, " saw ") {
		t.Fatalf("curl through netlink tc filters: %q, %v", out, err)
	}
	a.Stop(t)
	if out, err := curlFrom(t, l, l.Client, url); err != nil || !strings.Contains(out, " saw ") {
		t.Fatalf("curl with the agent stopped: %q, %v", out, err)
	}
	l.NodeCLI(t, node, "cleanup") // on the node: the filters are on its devices
	if got := filters(); len(got) != 0 {
		t.Fatalf("cleanup left tc filters %v", got)
	}
	if out, err := curlFrom(t, l, l.Client, url); err == nil {
		t.Fatalf("after cleanup the NodePort still answered %q", out)
	}
}
