package xds

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Every field of a backend counts in the selection hash: a field added to
// model.Backend and left out of selectionHash would let its changes go unbuilt.
func TestSelectionHashSeesEveryField(t *testing.T) {
	base := model.Backend{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Weight: 1, Ready: true, Serving: true,
		NodeName: "n1", Zone: "z1", ForZones: model.NamesOf("z1"), ForNodes: model.NamesOf("n1")}
	h := selectionHash([]model.Backend{base})
	typ := reflect.TypeFor[model.Backend]()
	for i := range typ.NumField() {
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Uint16:
			f.SetUint(f.Uint() + 1)
		case reflect.String:
			f.SetString(f.String() + "x")
		default:
			if typ.Field(i).Type != reflect.TypeFor[netip.Addr]() {
				t.Fatalf("field %s of type %s: teach this test to change it", typ.Field(i).Name, f.Type())
			}
			f.Set(reflect.ValueOf(netip.MustParseAddr("10.0.0.2")))
		}
		if selectionHash([]model.Backend{changed}) == h {
			t.Errorf("changing %s leaves the selection hash as it was", typ.Field(i).Name)
		}
	}
	// The same address as IPv4 and as IPv4-mapped IPv6, and strings that trade bytes.
	mapped := base
	mapped.Addr = netip.AddrFrom16(base.Addr.As16())
	moved := base
	moved.NodeName, moved.Zone = "n1z", "1"
	for name, b := range map[string]model.Backend{"mapped": mapped, "moved": moved} {
		if selectionHash([]model.Backend{b}) == h {
			t.Errorf("%s backend hashes as the original", name)
		}
	}
	// Order counts, as it did when the selection itself was compared.
	other := base
	other.Port = 81
	if selectionHash([]model.Backend{base, other}) == selectionHash([]model.Backend{other, base}) {
		t.Error("the order of the selection does not change its hash")
	}
}
