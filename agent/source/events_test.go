package source

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sockmesh/sockmesh/agent/model"
)

// postedEvents records the Events the fake API server is sent, created or patched (the
// recorder patches an event it has posted before instead of creating another).
type postedEvents struct {
	mu     sync.Mutex
	events []*corev1.Event
}

func (p *postedEvents) watch(client *fake.Clientset) {
	client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ev := a.(k8stesting.CreateAction).GetObject().(*corev1.Event)
		p.mu.Lock()
		p.events = append(p.events, ev.DeepCopy())
		p.mu.Unlock()
		return true, ev, nil
	})
	client.PrependReactor("patch", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p.mu.Lock()
		p.events = append(p.events, &corev1.Event{Reason: "(patch of " + a.(k8stesting.PatchAction).GetName() + ")"})
		p.mu.Unlock()
		return true, &corev1.Event{}, nil
	})
}

func (p *postedEvents) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events)
}

// waitFor waits until n events were posted and returns them.
func (p *postedEvents) waitFor(t *testing.T, n int) []*corev1.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.count() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) != n {
		t.Fatalf("%d events posted, want %d: %+v", len(p.events), n, p.events)
	}
	return append([]*corev1.Event(nil), p.events...)
}

// running starts k on client and waits for its first snapshot; the source stops at
// cleanup.
func running(t *testing.T, k *Kubernetes) {
	t.Helper()
	ready := make(chan struct{})
	var once sync.Once
	k.MinSync = 10 * time.Millisecond
	k.OnUpdate = func(u Update) {
		if u.Snapshot != nil {
			once.Do(func() { close(ready) })
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("Run ended before the first snapshot: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot within 10s")
	}
}

// Report posts one Warning Event per new object error, regarding the object (with its
// apiVersion and the UID the informers hold), reason in CamelCase, as
// sockmesh.io/agent on this node; errors about files and nodes get none, and an error
// that persists is not posted again.
func TestReportPostsAnEventPerNewObjectError(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "uid-web"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		slice("web-1", "10.0.1.1"),
	)
	grant(client, nil)
	var posted postedEvents
	posted.watch(client)
	k := &Kubernetes{Client: client, NodeName: "node-a"}
	running(t, k)

	badPort := model.ObjectError{Kind: model.KindService, Namespace: "default", Name: "web", Reason: "invalid_port", Message: "ports[0]: port 0 is outside 1..65535"}
	badWeights := model.ObjectError{Kind: model.KindEndpointSlice, Namespace: "default", Name: "web-1", Reason: "invalid_annotation", Message: "annotation sockmesh.io/backend-weights: weight 5000 is outside 1..1000"}
	notAnObject := []model.ObjectError{
		{Kind: KindFile, Name: "/etc/sockmesh/services.yaml", Reason: ReasonMalformedYAML, Message: "line 3: not YAML"},
		{Kind: "Node", Name: "node-a", Reason: "map_full", Message: "the local backends map is full"},
	}
	k.Report(append([]model.ObjectError{badPort, badWeights}, notAnObject...))
	events := posted.waitFor(t, 2)
	byKind := map[string]*corev1.Event{}
	for _, ev := range events {
		byKind[ev.InvolvedObject.Kind] = ev
	}
	svc, es := byKind["Service"], byKind["EndpointSlice"]
	if svc == nil || es == nil {
		t.Fatalf("events %+v: want one for the Service and one for the EndpointSlice", events)
	}
	if svc.Type != corev1.EventTypeWarning || svc.Reason != "InvalidPort" || svc.Message != badPort.Message ||
		svc.Namespace != "default" || svc.ReportingController != EventReportingController || svc.ReportingInstance != "node-a" {
		t.Errorf("Service event: %+v", svc)
	}
	if ref := svc.InvolvedObject; ref.APIVersion != "v1" || ref.Name != "web" || ref.Namespace != "default" || ref.UID != "uid-web" {
		t.Errorf("Service event regarding %+v", ref)
	}
	if ref := es.InvolvedObject; es.Reason != "InvalidAnnotation" || ref.APIVersion != "discovery.k8s.io/v1" || ref.Name != "web-1" {
		t.Errorf("EndpointSlice event: reason %q regarding %+v", es.Reason, ref)
	}

	// The same errors again: nothing new. One gone and back: posted again.
	k.Report([]model.ObjectError{badPort, badWeights})
	k.Report([]model.ObjectError{badWeights})
	k.Report([]model.ObjectError{badPort, badWeights})
	posted.waitFor(t, 3)
	time.Sleep(200 * time.Millisecond)
	if n := posted.count(); n != 3 {
		t.Errorf("%d events after the repeats, want 3 (the Service's error posted again after it went away)", n)
	}
}

// Report before Run, or after it ended, posts nothing and does not block.
func TestReportWithoutRunPostsNothing(t *testing.T) {
	client := fake.NewClientset()
	var posted postedEvents
	posted.watch(client)
	k := &Kubernetes{Client: client}
	k.Report([]model.ObjectError{{Kind: model.KindService, Namespace: "default", Name: "web", Reason: "invalid_port"}})
	time.Sleep(50 * time.Millisecond)
	if n := posted.count(); n != 0 {
		t.Errorf("%d events posted without Run", n)
	}
}

func TestEventReason(t *testing.T) {
	for in, want := range map[string]string{
		"invalid_port":            "InvalidPort",
		"invalid_annotation":      "InvalidAnnotation",
		"invalid_cluster_ip":      "InvalidClusterIP",
		"xds_name_collision":      "XDSNameCollision",
		"unsupported_api_version": "UnsupportedAPIVersion",
		"map_full":                "MapFull",
		"AlreadyCamel":            "AlreadyCamel",
		"":                        "Rejected",
	} {
		if got := EventReason(in); got != want {
			t.Errorf("EventReason(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEventNoteIsCutToTheAPILimit(t *testing.T) {
	long := strings.Repeat("é", 1000) // 2000 bytes
	note := eventNote(model.ObjectError{Message: long})
	if len(note) > maxEventNote || !strings.HasSuffix(note, "…") || !strings.HasPrefix(long, strings.TrimSuffix(note, "…")) {
		t.Errorf("note of %d bytes: %q…", len(note), note[:20])
	}
	if got := eventNote(model.ObjectError{Reason: "map_full"}); got != "map_full" {
		t.Errorf("note without a message: %q", got)
	}
}
