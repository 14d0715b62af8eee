package source

import (
	"strings"
	"sync"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/sockmesh/sockmesh/agent/model"
)

// EventReportingController is the reportingController (and source component) of the
// Events the agent posts.
const EventReportingController = "sockmesh.io/agent"

// maxEventNote bounds an Event's message: events.k8s.io/v1 refuses notes over 1 KiB.
const maxEventNote = 1024

// objectAPIVersions are the kinds an Event can be about, with the apiVersion the source
// reads them at. Errors about anything else (a File, a Node, a kind sockmesh does not
// read) are logged and counted, but have no object in the API to attach an Event to.
var objectAPIVersions = map[string]string{
	model.KindService:             "v1",
	model.KindEndpointSlice:       discoveryv1.SchemeGroupVersion.String(),
	model.KindPod:                 "v1",
	model.KindAuthorizationPolicy: AuthorizationPolicies.GroupVersion().String(),
}

// eventReporter posts a Warning Event for each object error when it first appears.
// Posting is asynchronous: the recorder queues the event (dropping it if 1000 are
// already queued) and the broadcaster writes it to the API server in its own goroutine,
// so Report never waits on the network.
type eventReporter struct {
	mu          sync.Mutex
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder // nil when the source is not running
	caches      objectCaches
	posted      map[model.ObjectError]bool // the errors of the previous Report
}

// objectCaches are the informers' stores, where the UIDs of reported objects come from.
type objectCaches struct {
	services, slices, pods, policies cache.Store // policies may be nil
}

// start begins posting, as instance (the node name) of EventReportingController.
func (r *eventReporter) start(client kubernetes.Interface, instance string, caches objectCaches) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.broadcaster = b
	r.recorder = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: EventReportingController, Host: instance})
	r.caches = caches
	r.posted = nil
}

// stop ends posting; events still queued are written if the API server takes them at
// once, and later Reports post nothing.
func (r *eventReporter) stop() {
	r.mu.Lock()
	b := r.broadcaster
	r.broadcaster, r.recorder = nil, nil
	r.mu.Unlock()
	if b != nil {
		b.Shutdown()
	}
}

// Report posts a Warning Event regarding each object in errs that was not in the previous
// call's list: an error that persists is posted once, and one that goes away and comes
// back is posted again. The reason is the error's Reason in CamelCase (invalid_port →
// InvalidPort), the message its Message. Errors about things that are not API objects
// (Kind File or Node) get no Event. It never blocks on the API server.
func (k *Kubernetes) Report(errs []model.ObjectError) {
	r := &k.events
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recorder == nil {
		return // not running: nothing is posted, nor remembered as posted
	}
	current := make(map[model.ObjectError]bool, len(errs))
	for _, e := range errs {
		current[e] = true
		if r.posted[e] {
			continue
		}
		if ref, ok := r.caches.reference(e); ok {
			r.recorder.Event(ref, corev1.EventTypeWarning, EventReason(e.Reason), eventNote(e))
		}
	}
	r.posted = current
}

// reference is the ObjectReference an Event about e is regarding, with the UID the
// informers hold for the object; false when e is about no API object.
func (c objectCaches) reference(e model.ObjectError) (*corev1.ObjectReference, bool) {
	apiVersion, ok := objectAPIVersions[e.Kind]
	if !ok || e.Name == "" || e.Namespace == "" {
		return nil, false
	}
	ref := &corev1.ObjectReference{Kind: e.Kind, APIVersion: apiVersion, Namespace: e.Namespace, Name: e.Name}
	if store := c.of(e.Kind); store != nil {
		ref.UID = uidIn(store, e.Namespace+"/"+e.Name)
	}
	return ref, true
}

// of is the informer store that holds objects of kind, or nil.
func (c objectCaches) of(kind string) cache.Store {
	switch kind {
	case model.KindService:
		return c.services
	case model.KindEndpointSlice:
		return c.slices
	case model.KindPod:
		return c.pods
	case model.KindAuthorizationPolicy:
		return c.policies
	}
	return nil
}

// uidIn is the UID of the object stored under key, or "" when there is none.
func uidIn(store cache.Store, key string) types.UID {
	obj, exists, err := store.GetByKey(key)
	if err != nil || !exists {
		return ""
	}
	if m, ok := obj.(interface{ GetUID() types.UID }); ok {
		return m.GetUID()
	}
	return ""
}

// eventAcronyms are the words of a reason that Kubernetes spells in capitals.
var eventAcronyms = map[string]string{"ip": "IP", "api": "API", "xds": "XDS", "yaml": "YAML", "dns": "DNS", "udp": "UDP", "tcp": "TCP"}

// EventReason turns a snake_case ObjectError reason into the CamelCase Kubernetes uses
// for event reasons: invalid_port → InvalidPort, invalid_cluster_ip → InvalidClusterIP.
func EventReason(reason string) string {
	var b strings.Builder
	for _, word := range strings.Split(reason, "_") {
		if word == "" {
			continue
		}
		if up, ok := eventAcronyms[strings.ToLower(word)]; ok {
			b.WriteString(up)
			continue
		}
		b.WriteString(strings.ToUpper(word[:1]) + word[1:])
	}
	if b.Len() == 0 {
		return "Rejected"
	}
	return b.String()
}

// eventNote is the Event's message: the error's sentence, cut to what the API accepts.
func eventNote(e model.ObjectError) string {
	note := e.Message
	if note == "" {
		note = e.Reason
	}
	if len(note) <= maxEventNote {
		return note
	}
	cut := maxEventNote - len("…")
	for cut > 0 && !utf8.RuneStart(note[cut]) {
		cut--
	}
	return note[:cut] + "…"
}
