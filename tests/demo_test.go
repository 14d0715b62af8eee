package tests

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/tests/harness"
)

// The README's main job: `sockmesh demo` must run, spread traffic and clean up.
func TestDemoSpreadsTrafficAndCleansUp(t *testing.T) {
	harness.RequirePrivileged(t)
	before := harness.Leftovers(t)
	out, err := exec.Command(harness.Binary(t), "demo", "--requests", "60").CombinedOutput()
	if err != nil {
		t.Fatalf("sockmesh demo: %v\n%s", err, out)
	}
	text := string(out)
	rows := regexp.MustCompile(`(?m)^(TCP connect\+request|DNS query \(UDP\))\s+(\S+)\s+backend-1=(\d+) backend-2=(\d+)\s+(\S+)$`).FindAllStringSubmatch(text, -1)
	if len(rows) != 4 {
		t.Fatalf("want 4 traffic rows (TCP and DNS, v4 and v6):\n%s", text)
	}
	for _, r := range rows {
		b1, _ := strconv.Atoi(r[3])
		b2, _ := strconv.Atoi(r[4])
		if b1+b2 != 60 || b1 == 0 || b2 == 0 {
			t.Errorf("%s to %s: backend-1=%d backend-2=%d", r[1], r[2], b1, b2)
		}
		if r[2] != r[5] {
			t.Errorf("%s to %s: the client saw its peer as %s", r[1], r[2], r[5])
		}
	}
	if !strings.Contains(text, "xlate_tcp4=60") || !strings.Contains(text, "xlate_udp6=60") {
		t.Errorf("counters missing from the demo output:\n%s", text)
	}
	if after := harness.Leftovers(t); after != before {
		t.Fatalf("the demo left things behind:\nbefore: %s\nafter:  %s", before, after)
	}
}
