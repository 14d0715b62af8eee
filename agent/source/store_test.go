package source

import (
	"strings"
	"sync"
	"testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// backendsOf renders the backends of the frontend, or "absent".
func backendsOf(snap *model.Snapshot, frontend string) string {
	for fe, svc := range snap.Services {
		if fe.String() == frontend {
			var addrs []string
			for _, b := range svc.Backends {
				addrs = append(addrs, b.AddrPort().String())
			}
			return "[" + strings.Join(addrs, " ") + "]"
		}
	}
	return "absent"
}

func TestStoreKeepsLastGoodVersion(t *testing.T) {
	var s Store
	replace := func(docs ...string) []model.ObjectError {
		d := decodeOK(t, docs...)
		return s.Replace(*d)
	}
	check := func(step, frontend, want string) {
		t.Helper()
		if got := backendsOf(s.Snapshot(), frontend); got != want {
			t.Errorf("%s: %s backends = %s, want %s", step, frontend, got, want)
		}
	}

	if errs := replace(serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.1")); len(errs) > 0 {
		t.Fatalf("first version: %v", errs)
	}
	check("first version", "10.96.0.10:80/TCP", "[10.0.1.1:8080]")

	// An invalid Service and an invalid slice: both old versions stay, both are reported.
	errs := replace(serviceYAML("web", "10.96.0.999"),
		strings.Replace(sliceYAML("web-1", "web", "10.0.1.2"), "port: 8080", "port: 0", 1))
	check("invalid update", "10.96.0.10:80/TCP", "[10.0.1.1:8080]")
	if len(errs) != 2 {
		t.Fatalf("invalid update: errors = %v, want 2", errs)
	}
	for _, e := range errs {
		if !strings.HasSuffix(e.Message, "keeping the last good version") {
			t.Errorf("error %q does not say the last good version is kept", e.Error())
		}
	}
	if snapErrs := s.Snapshot().Errors; !hasError(snapErrs, model.KindService, "web", model.ReasonInvalidClusterIP) ||
		!hasError(snapErrs, model.KindEndpointSlice, "web-1", model.ReasonInvalidPort) {
		t.Errorf("snapshot errors = %v, want the validation errors", snapErrs)
	}

	// A new object that is invalid from the start has nothing to keep.
	errs = replace(serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.2"), serviceYAML("api", "bogus"))
	check("valid again", "10.96.0.10:80/TCP", "[10.0.1.2:8080]")
	if len(errs) != 1 || errs[0].Name != "api" || strings.Contains(errs[0].Message, "keeping") {
		t.Errorf("new invalid object: errors = %v", errs)
	}

	// Objects missing from the input are deleted; the stale errors go with the input.
	errs = replace(serviceYAML("other", "10.96.0.20"))
	check("deleted", "10.96.0.10:80/TCP", "absent")
	check("deleted", "10.96.0.20:80/TCP", "[]")
	if snap := s.Snapshot(); len(errs) > 0 || len(snap.Errors) > 0 {
		t.Errorf("after delete: errors = %v, snapshot errors = %v", errs, snap.Errors)
	}
}

// A slice whose Service is not there yet is kept, not dropped: it is used as soon as the
// Service appears, without the slice being sent again.
func TestStoreUnknownServiceResolvesLater(t *testing.T) {
	var s Store
	d := decodeOK(t, sliceYAML("web-1", "web", "10.0.1.1"))
	s.Replace(Decoded{Slices: d.Slices})
	if errs := s.Snapshot().Errors; !hasError(errs, model.KindEndpointSlice, "web-1", model.ReasonUnknownService) {
		t.Errorf("errors = %v, want unknown_service", errs)
	}
	d2 := decodeOK(t, serviceYAML("web", "10.96.0.10"))
	s.Replace(Decoded{Services: d2.Services, Slices: d.Slices})
	snap := s.Snapshot()
	if got := backendsOf(snap, "10.96.0.10:80/TCP"); got != "[10.0.1.1:8080]" || len(snap.Errors) > 0 {
		t.Errorf("backends = %s, errors = %v", got, snap.Errors)
	}
}

func TestStoreConcurrentUse(t *testing.T) {
	var s Store
	d := decodeOK(t, serviceYAML("web", "10.96.0.10"), sliceYAML("web-1", "web", "10.0.1.1"))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				s.Replace(*d)
				if got := backendsOf(s.Snapshot(), "10.96.0.10:80/TCP"); got != "[10.0.1.1:8080]" {
					t.Errorf("backends = %s", got)
					return
				}
			}
		})
	}
	wg.Wait()
}
