package tests

import (
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/internal/netlab"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// A slot is only followed to a backend entry of its own service, and an empty element
// of the backend array is no backend: the id of a removed backend may pass to another
// service while a connect still holds a stale slot. Here, behind the stopped agent's
// back, the TCP frontend's slots are pointed at a copy of its own backend entry that
// names another service (the UDP frontend), which programs without the check would
// dial and reach, then at an empty element: every connect is refused, as to a service
// without backends.
func TestSlotsReachOnlyTheirOwnServicesBackends(t *testing.T) {
	env := harness.NewEnv(t, "backend-1")
	env.StartBackends(t, "backend-1")
	path := env.WriteFile(t, "svc.yaml", netlab.ServiceYAML("demo", "web", env.Hosts("backend-1")))
	client := env.Host("client")
	env.StartAgent(t, path).Stop(t)
	if res := env.Run(t, client, "tcp", tcpTo(vip4), 5); len(res.TCP) != 5 {
		t.Fatalf("before the maps are touched: %+v", res)
	}

	maps, err := bpf.OpenPinned(env.BPFFS)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	addr, fam := bpf.AddrFrom(vip4)
	var tcp, udp bpf.SvcValue
	if err := maps.SmServices.Lookup(bpf.SvcKey{Vip: addr, Port: bpf.PortToNet(netlab.ServiceHTTPPort), Proto: 6, Family: fam}, &tcp); err != nil {
		t.Fatal(err)
	}
	if err := maps.SmServices.Lookup(bpf.SvcKey{Vip: addr, Port: bpf.PortToNet(netlab.DNSPort), Proto: 17, Family: fam}, &udp); err != nil {
		t.Fatal(err)
	}
	var own bpf.BackendValue
	var free uint32
	err = bpf.ReadArray(maps.SmBackends, func(id uint32, v *bpf.BackendValue) {
		if v.SvcId == tcp.Id {
			own = *v
		}
		free = max(free, id+1)
	})
	if err != nil || own.Family == 0 || tcp.Count == 0 {
		t.Fatalf("no backend entry of the TCP frontend (%v), or it has %d slots", err, tcp.Count)
	}
	twin, empty := free, free+1
	own.SvcId = udp.Id
	if err := maps.SmBackends.Put(twin, own); err != nil {
		t.Fatal(err)
	}
	for _, target := range []struct {
		what string
		id   uint32
	}{{"another service's backend", twin}, {"an empty element", empty}} {
		for slot := uint32(1); slot <= tcp.Count; slot++ {
			if err := maps.SmSlots.Put(bpf.SlotKey{SvcId: tcp.Id, Slot: slot}, target.id); err != nil {
				t.Fatal(err)
			}
		}
		res := env.Run(t, client, "tcp", tcpTo(vip4), 5)
		if len(res.TCP) != 0 || len(res.Errors) != 5 {
			t.Fatalf("slots pointing at %s: %d connects answered, errors %v; want 5 refused", target.what, len(res.TCP), res.Errors)
		}
		for _, e := range res.Errors {
			if !strings.Contains(e, "connection refused") {
				t.Fatalf("slots pointing at %s: want connection refused, got %q", target.what, e)
			}
		}
	}
}
