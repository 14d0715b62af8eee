package agent_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/bpf"
)

// FuzzNothingProgrammedIsLost drives the file decoder, the store and the LB writer (on
// the fake maps, small enough to fill) with file versions a careless operator could
// write: objects broken, misspelt, invalid, moved, duplicated, files cut off at any
// byte, emptied, or not YAML at all. Its invariant: a programmed frontend disappears
// only when an input that parsed and validated omits it; while the file still holds
// that frontend's Service document whole and the file parses, it stays.
func FuzzNothingProgrammedIsLost(f *testing.F) {
	f.Add([]byte{0x00, 0x11, 0x22, 0x33, 0xff, 0x10, 0x21, 0x30})
	f.Add([]byte{0x01, 0x02, 0x03, 0x04, 0x05, 0x80, 0x90, 0xa0, 0xb0})
	f.Add([]byte{0x00, 0x00, 0x00, 0x00, 0xf0, 0xf1, 0xf2, 0xf3, 0x00, 0x07})
	f.Fuzz(func(t *testing.T, program []byte) {
		fakes := lbmaptest.NewTables(3, 5)
		w, err := lbmap.NewWriter(fakes.Tables(), nopObserver{})
		if err != nil {
			t.Fatal(err)
		}
		file := source.NewFile("/fuzz/services.yaml", nil)
		for step := 0; len(program) > 0 && step < 12; step++ {
			var data string
			data, program = fileVersion(program)
			before := programmed(fakes)
			u := file.Read([]byte(data))
			if u.Snapshot != nil {
				if _, err := w.Apply(u.Snapshot); err != nil {
					t.Fatalf("step %d: Apply: %v", step, err)
				}
			}
			if n := fakes.Refused(); n > 0 {
				t.Fatalf("step %d: the maps refused %d writes: the writer planned beyond capacity", step, n)
			}
			after := programmed(fakes)
			for key, fe := range before {
				if _, ok := after[key]; ok {
					continue
				}
				doc := serviceDoc(fe.svc, fe.ipOffset)
				switch {
				case u.Snapshot == nil || len(u.Errors) > 0:
					t.Fatalf("step %d: frontend of s%d removed by an input that did not parse (%v)\n%s", step, fe.svc, u.Errors, data)
				case strings.Contains(data, doc) && strings.Count(data, fmt.Sprintf("name: s%d, namespace: fuzz}\nspec", fe.svc)) == 1:
					t.Fatalf("step %d: frontend of s%d removed while its Service document is in the file, once\n%s", step, fe.svc, data)
				case rejected(u.Snapshot.Errors, fe.svc) != "" && !accepted(u.Snapshot, fe.svc):
					t.Fatalf("step %d: frontend of s%d removed by an input that did not validate: %s\n%s", step, fe.svc, rejected(u.Snapshot.Errors, fe.svc), data)
				}
			}
		}
	})
}

// rejected returns the error of an object named like fuzz Service svc, if the input
// held one that was not accepted (a copy beside an accepted one does not count).
func rejected(errs []model.ObjectError, svc int) string {
	for _, e := range errs {
		if e.Namespace == "fuzz" && e.Name == fmt.Sprintf("s%d", svc) && e.Reason != model.ReasonDuplicateObject {
			return e.Error()
		}
	}
	return ""
}

// accepted says whether the snapshot holds a version of fuzz Service svc: then that
// version says where its frontends are, whatever else the file holds by its name.
func accepted(snap *model.Snapshot, svc int) bool {
	for _, s := range snap.Services {
		if s.Name.Namespace == "fuzz" && s.Name.Name == fmt.Sprintf("s%d", svc) {
			return true
		}
	}
	return false
}

type nopObserver struct{}

func (nopObserver) MapOp(string, string, int, error) {}
func (nopObserver) MapRepairs(string, int)           {}

// fuzzFrontend says which fuzz Service document a programmed frontend comes from.
type fuzzFrontend struct{ svc, ipOffset int }

// programmed lists the frontends in the fake service map.
func programmed(f *lbmaptest.Fakes) map[bpf.SvcKey]fuzzFrontend {
	out := map[bpf.SvcKey]fuzzFrontend{}
	for k := range f.Services.Entries {
		ip := k.Vip.ToAddr(k.Family).As4()
		out[k] = fuzzFrontend{svc: int(ip[3]) - 10, ipOffset: 100 * int(ip[2])}
	}
	return out
}

// fileVersion builds one file from the program's next bytes and returns the rest.
// Byte 0: how many documents (low 3 bits) and whether to cut the file (bit 3, at the
// offset byte 1 gives). Each document takes one byte: the Service index (low 2 bits)
// and what to write for it (the rest).
func fileVersion(p []byte) (string, []byte) {
	head := p[0]
	p = p[1:]
	n := int(head & 7)
	cut := -1
	if head&8 != 0 && len(p) > 0 {
		cut = int(p[0])
		p = p[1:]
	}
	var docs []string
	for i := 0; i < n && len(p) > 0; i++ {
		svc, what := int(p[0]&3), p[0]>>2
		p = p[1:]
		docs = append(docs, document(svc, what))
	}
	data := strings.Join(docs, "---\n")
	if cut >= 0 && len(data) > 0 {
		data = data[:cut*len(data)/256]
	}
	return data, p
}

// document is one YAML document about fuzz Service svc (or noise).
func document(svc int, what byte) string {
	switch what % 12 {
	case 0, 1:
		return serviceDoc(svc, 0)
	case 2:
		return strings.Replace(serviceDoc(svc, 0), "kind: Service", "kind: Servcie", 1)
	case 3:
		return strings.Replace(serviceDoc(svc, 0), "port: 80", "port: 70000", 1)
	case 4:
		return serviceDoc(svc, 100) // moved to another clusterIP: omits the old frontend
	case 5:
		return strings.Replace(serviceDoc(svc, 0), "name: s", "name: S", 1) // invalid name
	case 6, 7:
		return sliceDoc(svc, int(what>>4))
	case 8:
		return strings.Replace(sliceDoc(svc, 3), "discovery.k8s.io/v1", "discovery.k8s.io/v1beta1", 1)
	case 9:
		return "apiVersion: v1\nkind: List\nitems: []\n"
	case 10:
		return "kind: [\n"
	}
	return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
}

func serviceDoc(svc, ipOffset int) string {
	ip := netip.AddrFrom4([4]byte{10, 96, byte(ipOffset / 100), byte(10 + svc)})
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: s%d, namespace: fuzz}\nspec: {clusterIP: %s, ports: [{name: http, port: 80}]}\n", svc, ip)
}

// sliceDoc gives Service svc 1..4 backends (the fake maps hold 5).
func sliceDoc(svc, n int) string {
	var eps []string
	for i := 0; i <= n%4; i++ {
		eps = append(eps, fmt.Sprintf("{addresses: [10.0.%d.%d]}", svc, i+1))
	}
	return fmt.Sprintf("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s%d-1, namespace: fuzz, labels: {kubernetes.io/service-name: s%d}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [%s]\n",
		svc, svc, strings.Join(eps, ", "))
}
