package envoy

import (
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

func TestBootstrapPassesEnvoysValidation(t *testing.T) {
	for _, listen := range []string{"unix:/run/sockmesh/xds.sock", "tcp:127.0.0.1:15010", "tcp:[::1]:15010"} {
		b, err := Bootstrap(Options{NodeName: "node-1", XDSListen: listen, AdminPort: 15000})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.ValidateAll(); err != nil {
			t.Fatalf("%s: %v", listen, err)
		}
		js, err := JSON(b)
		if err != nil {
			t.Fatal(err)
		}
		// Read back what Envoy would read (protojson varies its whitespace on purpose).
		var back bootstrapv3.Bootstrap
		if err := protojson.Unmarshal(js, &back); err != nil || back.Node.GetId() != "node-1" ||
			back.Admin.GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" {
			t.Fatalf("%s: %s %v", listen, js, err)
		}
	}
	if _, err := Bootstrap(Options{XDSListen: "unix:/x"}); err == nil {
		t.Fatal("a bootstrap without a node name")
	}
	if _, err := Bootstrap(Options{NodeName: "n", XDSListen: "http://x"}); err == nil {
		t.Fatal("a bad --xds-listen accepted")
	}
}
