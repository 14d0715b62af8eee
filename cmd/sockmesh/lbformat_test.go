package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/sockmesh/sockmesh/agent/lbmap"
	"github.com/sockmesh/sockmesh/agent/lbmap/lbmaptest"
	"github.com/sockmesh/sockmesh/bpf"
)

// tableReference is the table as `lb list` first printed it, through tabwriter.
func tableReference(svcs []lbmap.ListedService) string {
	var out bytes.Buffer
	tw := tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tFRONTEND\tAFFINITY\tBACKENDS")
	for _, s := range svcs {
		var bs []string
		for _, b := range s.Backends {
			e := b.Address.String()
			if len(s.Backends) > 0 && b.Slots != int(s.Slots)/len(s.Backends) {
				e += fmt.Sprintf(" (%d/%d)", b.Slots, s.Slots)
			}
			bs = append(bs, e)
		}
		if len(bs) == 0 {
			bs = []string{"(none: connects refused)"}
		}
		aff := "-"
		if s.AffinitySeconds > 0 {
			aff = fmt.Sprintf("%ds", s.AffinitySeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Frontend, aff, strings.Join(bs, ", "))
	}
	tw.Flush()
	return out.String()
}

// jsonReference is `lb list -o json` as encoding/json wrote it.
func jsonReference(svcs []lbmap.ListedService) string {
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	enc.Encode(svcs)
	return out.String()
}

func listedCases() map[string][]lbmap.ListedService {
	ap := netip.MustParseAddrPort
	web := lbmap.ListedService{ID: 1, Name: "demo/web:http", Frontend: "10.96.0.10:80/TCP", Slots: 4, Backends: []lbmap.ListedBackend{
		{ID: 1, Address: ap("10.0.0.2:8080"), Slots: 3}, {ID: 2, Address: ap("10.0.0.3:8080"), Slots: 1}}}
	v6 := lbmap.ListedService{ID: 2, Name: "demo/dns:dns", Frontend: "[fd00::a]:53/UDP", AffinitySeconds: 10800, Slots: 2, Backends: []lbmap.ListedBackend{
		{ID: 3, Address: ap("[fd00::1]:53"), Slots: 1}, {ID: 4, Address: ap("[::ffff:10.0.0.4]:53"), Slots: 1}}}
	none := lbmap.ListedService{ID: 3, Name: "", Frontend: "10.96.0.11:443/TCP", Backends: []lbmap.ListedBackend{}}
	odd := lbmap.ListedService{ID: 4, Name: "ns/ünïcode-名前:p", Frontend: "10.96.0.12:1/SCTP", Slots: 7, Backends: []lbmap.ListedBackend{
		{ID: 5, Address: netip.AddrPort{}, Slots: 7}, {ID: 6, Address: ap("[fe80::1%eth0]:9"), Slots: 0}}}
	html := lbmap.ListedService{ID: 5, Name: `a<b>&"c"\d` + "\x01\u2028\xff\xfe", Frontend: "10.96.0.13:2/TCP", Slots: 1, Backends: []lbmap.ListedBackend{
		{ID: 7, Address: ap("1.2.3.4:5"), Slots: 1}}}
	escapes := lbmap.ListedService{ID: 9, Name: `<x y="1">&amp;` + "\r\x00\u2028\xfe\u00e9", Frontend: "10.96.0.15:3/TCP", Backends: []lbmap.ListedBackend{}}
	long := lbmap.ListedService{ID: 6, Name: strings.Repeat("x", 127), Frontend: "10.96.0.14:65535/UDP", AffinitySeconds: 1, Slots: 3, Backends: []lbmap.ListedBackend{
		{ID: 8, Address: ap("1.2.3.4:5"), Slots: 1}, {ID: 9, Address: ap("1.2.3.5:5"), Slots: 1}}}
	var many []lbmap.ListedService
	for i := 0; i < 3000; i++ {
		s := web
		s.ID = uint32(i)
		s.Name = fmt.Sprintf("scale/fill-%d:http", i)
		many = append(many, s, v6, none)
	}
	return map[string][]lbmap.ListedService{
		"none":      {},
		"nil":       nil,
		"plain":     {web, v6, none, long},
		"unicode":   {web, odd, none},
		"escapes":   {web, odd, escapes, none},
		"odd names": {web, odd, html, none},
		"tab":       {web, {ID: 7, Name: "a\tb", Frontend: "1.1.1.1:1/TCP", Backends: []lbmap.ListedBackend{}}},
		"newline":   {{ID: 8, Name: "a\nb\vc\fd", Frontend: "1.1.1.1:1/TCP"}, web},
		"many":      many,
	}
}

func TestWriteTableMatchesTabwriter(t *testing.T) {
	for name, svcs := range listedCases() {
		t.Run(name, func(t *testing.T) {
			var got bytes.Buffer
			if err := writeTable(&got, svcs, nil); err != nil {
				t.Fatal(err)
			}
			if want := tableReference(svcs); got.String() != want {
				t.Fatalf("got\n%q\nwant\n%q", got.String(), want)
			}
		})
	}
}

func TestWriteJSONMatchesEncoder(t *testing.T) {
	for name, svcs := range listedCases() {
		t.Run(name, func(t *testing.T) {
			var got bytes.Buffer
			if err := writeJSON(&got, svcs, nil); err != nil {
				t.Fatal(err)
			}
			if want := jsonReference(svcs); got.String() != want {
				t.Fatalf("got\n%s\nwant\n%s", got.String(), want)
			}
		})
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, fmt.Errorf("disk full")
	}
	w.after--
	return len(p), nil
}

func TestWriteListReportsWriteErrors(t *testing.T) {
	svcs := listedCases()["many"]
	if err := writeTable(&failingWriter{after: 1}, svcs, nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("table: %v", err)
	}
	if err := writeJSON(&failingWriter{after: 1}, svcs, nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("json: %v", err)
	}
}

// listingFakes holds n services of up to 12 backends each (some without any, one
// listed under two frontends), with ids out of the services' order, as churn leaves
// them: more rows than one wave of chunks holds.
func listingFakes(n int) *lbmaptest.Fakes {
	f := lbmaptest.NewTables(n+1, 16*n)
	next := uint32(16 * n)
	for i := range n {
		svc := uint32(i + 1)
		fe, fam := bpf.AddrFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}))
		count := uint32(0)
		for j := range i % 13 {
			a, af := bpf.AddrFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(200 - j)}))
			f.Backends.Entries[next] = bpf.BackendValue{Addr: a, Port: bpf.PortToNet(8080), Proto: 6, Family: af, SvcId: svc, Slots: uint32(1 + j%2)}
			next -= 7 // ids run down, and skip
			count += uint32(1 + j%2)
		}
		f.Services.Entries[bpf.SvcKey{Vip: fe, Port: bpf.PortToNet(80), Proto: 6, Family: fam}] = bpf.SvcValue{Id: svc, Count: count, AffinityTimeout: uint32(i % 3)}
		f.Names.Entries[svc] = bpf.NameFrom(fmt.Sprintf("ns/svc-%d:http", i))
	}
	fe, fam := bpf.AddrFrom(netip.MustParseAddr("fd00::1"))
	f.Services.Entries[bpf.SvcKey{Vip: fe, Port: bpf.PortToNet(80), Proto: 17, Family: fam}] = bpf.SvcValue{Id: 5, Count: 4}
	return f
}

// Filled a chunk at a time from a listing, the outputs are those of every service
// built first.
func TestWriteListFilledByChunks(t *testing.T) {
	f := listingFakes(3*rowsPerChunk*runtime.GOMAXPROCS(0) + 17)
	all, err := lbmap.List(f.Tables())
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []struct {
		name  string
		write func(io.Writer, []lbmap.ListedService, backendsFiller) error
		want  string
	}{
		{"table", writeTable, tableReference(all)},
		{"json", writeJSON, jsonReference(all)},
	} {
		l, err := lbmap.NewListing(f.Tables())
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := format.write(&got, l.Headers(), fillFrom(l)); err != nil {
			t.Fatal(err)
		}
		if got.String() != format.want {
			t.Errorf("%s filled by chunks differs from the whole listing (%d bytes, want %d)", format.name, got.Len(), len(format.want))
		}
	}
}
