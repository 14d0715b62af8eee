package envoy

import (
	"strings"
	"testing"
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
		if err != nil || !strings.Contains(string(js), `"id": "node-1"`) || !strings.Contains(string(js), "127.0.0.1") {
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
