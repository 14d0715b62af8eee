package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf"
)

// BenchmarkNodePortPacket times the NodePort programs per packet with BPF_PROG_TEST_RUN
// (in-kernel timing over many repeats) in a node namespace: a hit is a packet of a
// tracked flow (translated and redirected), a miss one for no frontend (left to the
// stack, the cost every other packet pays), with 10 and 10,000 frontends programmed.
// The baseline, measured in the same run, is an empty program of the same type.
func BenchmarkNodePortPacket(b *testing.B) {
	f := newNPFixture(b)
	xdp, tcIn, _ := f.np.Programs()
	empty := map[string]*ebpf.Program{}
	for name, typ := range map[string]ebpf.ProgramType{"xdp": ebpf.XDP, "tc": ebpf.SchedCLS} {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, map[string]int32{"xdp": 2, "tc": 0}[name]), asm.Return()}})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		empty[name] = p
	}
	backend := netip.AddrPortFrom(npBackend4, 8080)
	f.frontend(netip.Addr{}, bpf.FamilyIPv4, 30080, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
	flow := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 30080), tcpFlags: "S"}
	if r := f.run(tcIn, flow.bytes(b), false); r.action != tcActRedirect {
		b.Fatalf("the benchmark's flow was not tracked: action %d", r.action)
	}
	flow.tcpFlags = "A"
	hit := flow.bytes(b)
	miss := packet{src: netip.AddrPortFrom(npClient4, 40000), dst: netip.AddrPortFrom(f.node.IPv4, 22), tcpFlags: "A"}.bytes(b)

	const repeat = 200000
	measure := func(p *ebpf.Program, frame []byte) float64 {
		var per float64
		err := f.node.Do(func() error {
			_, d, err := p.Benchmark(frame, repeat, b.ResetTimer)
			per = float64(d.Nanoseconds())
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return per
	}
	programmed := 1
	for b.Loop() {
		for _, n := range []int{10, 10000} {
			for ; programmed < n; programmed++ {
				ip := netip.AddrFrom4([4]byte{198, 18, byte(programmed >> 8), byte(programmed)})
				f.frontend(ip, bpf.FamilyIPv4, 80, unix.IPPROTO_TCP, backend, bpf.SvcFlagExternal)
			}
			for name, p := range map[string]*ebpf.Program{"xdp": xdp, "tc": tcIn} {
				base := measure(empty[name], hit)
				h, m := measure(p, hit), measure(p, miss)
				b.ReportMetric(h, fmt.Sprintf("%s-hit-svc%d-ns", name, n))
				b.ReportMetric(m, fmt.Sprintf("%s-miss-svc%d-ns", name, n))
				b.ReportMetric(h/base, fmt.Sprintf("%s-hit-svc%d-vs-empty-x", name, n))
			}
		}
	}
}
