package agent

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

type opCount struct{ updates, deletes int }

func (o *opCount) MapOp(_, op string, n int, _ error) {
	if op == "update" {
		o.updates += n
	} else {
		o.deletes += n
	}
}
func (o *opCount) MapRepairs(string, int) {}

// TestReplaceMapWritesOnlyTheDifference: the device maps are rewritten with what
// changed only, and an incomplete read (prune off) removes nothing.
func TestReplaceMapWritesOnlyTheDifference(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (BPF maps) and CI must run it")
		}
		t.Skip("needs root: creates a BPF map")
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var obs opCount
	if err := replaceMap(m, map[uint32]uint32{1: 10, 2: 20}, true, &obs); err != nil || obs.updates != 2 {
		t.Fatalf("first write: %v, %d updates", err, obs.updates)
	}
	obs = opCount{}
	if err := replaceMap(m, map[uint32]uint32{1: 10, 2: 20}, true, &obs); err != nil || obs != (opCount{}) {
		t.Fatalf("the same content again: %v, %+v (want nothing written)", err, obs)
	}
	if err := replaceMap(m, map[uint32]uint32{1: 11}, false, &obs); err != nil || obs.updates != 1 || obs.deletes != 0 {
		t.Fatalf("an incomplete read: %v, %+v (want one update, no delete)", err, obs)
	}
	var v uint32
	if err := m.Lookup(uint32(2), &v); err != nil || v != 20 {
		t.Fatalf("an incomplete read removed entry 2: %v", err)
	}
	obs = opCount{}
	if err := replaceMap(m, map[uint32]uint32{1: 11}, true, &obs); err != nil || obs.deletes != 1 {
		t.Fatalf("a complete read: %v, %+v (want entry 2 deleted)", err, obs)
	}
}
