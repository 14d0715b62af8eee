package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/sockmesh/sockmesh/agent/model"
)

// AuthorizationPolicies is the resource of Istio's security.istio.io/v1 policies.
var AuthorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// retryBase is the first delay before a failed pass is retried; it doubles up to 30 s.
const retryBase = 100 * time.Millisecond

// Kubernetes is the kubernetes source: client-go shared informers for Services,
// EndpointSlices and Pods, and a dynamic one for AuthorizationPolicies, feeding the same
// Store the file source uses. Events only record what changed (see changeTracker); a
// rate-limited work queue turns each batch into one pass: the Services and
// EndpointSlices that changed are stored and rebuilt alone (Store.UpdateServices and
// SnapshotChanged), anything else is one Replace of everything the informers hold (the
// full path, also the first). An API server outage or a watch expiry changes nothing:
// the informers keep their last lists and relist on their own when the server is back,
// and a relist delivers only the objects that changed.
//
// Before it starts the informers, Run checks that the API server grants every permission
// it will use (see requiredPermissions) and fails naming the missing ones. While it runs,
// Report posts a Warning Event for each object the agent rejects or cannot program.
type Kubernetes struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface // nil: no AuthorizationPolicies
	Log     *slog.Logger
	// NodeName is the reportingInstance of the Events the source posts. Empty: the
	// host name.
	NodeName string
	// OnUpdate gets an Update after the first full list and after each batch of changes.
	OnUpdate func(Update)
	// OnEvent, when set, learns of each informer event: the object's kind, and whether
	// it changed (a resync or relist re-delivers unchanged versions).
	OnEvent func(kind string, changed bool)
	// MinSync delays each pass to batch more events into it. Zero (the default): a pass
	// starts at once, and the events that arrive while it runs make the next one, so a
	// burst (a rollout) is batched by the work itself and a lone change waits for
	// nothing. (kube-proxy's minSyncPeriod is 1 s: its passes cost O(services).)
	MinSync time.Duration
	// Resync is how often the informers re-deliver everything. Zero: never.
	Resync time.Duration

	store  Store
	events eventReporter
}

// Store is the source's object store, e.g. to seed the frontends' holders before Run.
func (k *Kubernetes) Store() *Store { return &k.store }

// Preflight checks the agent's permissions once, before the agent touches the
// datapath, so a missing permission fails the start with nothing changed. An API server
// that cannot be reached is not an error here: Run keeps trying, while the pinned
// datapath keeps serving.
func (k *Kubernetes) Preflight(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	servesPolicies := k.Dynamic != nil && k.policiesServed() == nil
	err := checkPermissions(ctx, k.Client, requiredPermissions(servesPolicies))
	var missing *MissingPermissionsError
	switch {
	case errors.As(err, &missing):
		return err
	case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
		return fmt.Errorf("--source kubernetes: the API server refused the agent's credentials: %w", err)
	}
	return nil
}

// syncKey is the work queue's only key: every change leads to one full pass.
const syncKey = "sync"

// Run checks the agent's permissions, starts the informers, waits for their first
// lists and delivers an Update after each batch of changes, until ctx is done. Until the
// lists are in, nothing is delivered: the datapath keeps what it has. A missing
// permission ends Run at once with a *MissingPermissionsError naming each one.
func (k *Kubernetes) Run(ctx context.Context) error {
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	servesPolicies := false
	if k.Dynamic != nil {
		if err := k.policiesServed(); err != nil {
			log.Warn("AuthorizationPolicies are not read: "+err.Error(), "resource", AuthorizationPolicies.String())
		} else {
			servesPolicies = true
		}
	}
	k.deliverNoInput("checking the agent's permissions on the API server")
	if err := waitForPermissions(ctx, log, k.Client, requiredPermissions(servesPolicies)); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(k.Client, k.Resync, informers.WithTransform(dropManagedFields))
	services := factory.Core().V1().Services()
	slices := factory.Discovery().V1().EndpointSlices()
	pods := factory.Core().V1().Pods()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryBase, 30*time.Second),
	))
	defer queue.ShutDown()
	var changes changeTracker
	wake := func() {
		if k.MinSync > 0 {
			queue.AddAfter(syncKey, k.MinSync)
		} else {
			queue.Add(syncKey)
		}
	}
	// One handler for every informer: Services and EndpointSlices name the Service they
	// change; anything else (pods, policies, the node) takes the full pass.
	event := func(o any, changed bool) {
		if k.OnEvent != nil {
			k.OnEvent(eventKind(o), changed)
		}
	}
	record := func(objs ...any) {
		event(objs[len(objs)-1], true)
		for _, o := range objs {
			if name, ok := serviceOf(o); ok {
				changes.service(name)
			} else {
				changes.everything()
			}
		}
		wake()
	}
	onChange := cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { record(o) },
		UpdateFunc: func(old, o any) {
			if sameObjectVersion(old, o) {
				event(o, false) // a resync or relist re-delivering what is stored
				return
			}
			record(old, o)
		},
		DeleteFunc: func(o any) { record(o) },
	}
	if err := slices.Informer().AddIndexers(cache.Indexers{byServiceIndex: sliceServiceKey}); err != nil {
		return err
	}
	synced := []cache.InformerSynced{}
	for _, inf := range []cache.SharedIndexInformer{services.Informer(), slices.Informer(), pods.Informer()} {
		if _, err := inf.AddEventHandler(onChange); err != nil {
			return err
		}
		synced = append(synced, inf.HasSynced)
	}
	// This node only: its zone label decides topology hints.
	nodes := informers.NewSharedInformerFactoryWithOptions(k.Client, k.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + k.NodeName }))
	node := nodes.Core().V1().Nodes()
	if _, err := node.Informer().AddEventHandler(onChange); err != nil {
		return err
	}
	synced = append(synced, node.Informer().HasSynced)
	var policies cache.GenericLister
	caches := objectCaches{services: services.Informer().GetStore(), slices: slices.Informer().GetStore(), pods: pods.Informer().GetStore()}
	if servesPolicies {
		dyn := dynamicinformer.NewDynamicSharedInformerFactory(k.Dynamic, k.Resync)
		inf := dyn.ForResource(AuthorizationPolicies)
		if _, err := inf.Informer().AddEventHandler(onChange); err != nil {
			return err
		}
		synced = append(synced, inf.Informer().HasSynced)
		policies = inf.Lister()
		caches.policies = inf.Informer().GetStore()
		dyn.Start(ctx.Done())
		defer dyn.Shutdown()
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	nodes.Start(ctx.Done())
	defer nodes.Shutdown()
	k.events.start(k.Client, k.reportingInstance(), caches)
	defer k.events.stop()

	k.deliverNoInput("waiting for the API server's first lists")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	changes.everything() // the first pass lists everything
	queue.Add(syncKey)
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		dirtyServices, full := changes.take()
		var snap *model.Snapshot
		if full {
			d, err := k.list(services.Lister().List, slices.Lister().List, pods.Lister().List, policies)
			if err == nil {
				k.store.setZone(nodeZone(node.Lister(), k.NodeName))
				k.store.Replace(d)
				snap = k.store.Snapshot()
			} else {
				log.Error("cannot read the informers' lists; retrying", "err", err)
			}
		} else if len(dirtyServices) > 0 {
			states, err := serviceStates(dirtyServices, services.Informer().GetIndexer(), slices.Informer().GetIndexer())
			if err == nil {
				k.store.UpdateServices(states)
				snap = k.store.SnapshotChanged(dirtyServices)
			} else {
				log.Error("cannot read the informers' caches; retrying", "err", err)
			}
		}
		switch {
		case snap != nil:
			queue.Forget(key)
			if k.OnUpdate != nil {
				k.OnUpdate(Update{Snapshot: snap})
			}
		case full || len(dirtyServices) > 0: // failed: the retry takes it again
			changes.putBack(dirtyServices, full)
			queue.AddRateLimited(key)
		default:
			queue.Forget(key) // the events were already taken by an earlier pass
		}
		queue.Done(key)
	}
}

// eventKind names an informer object's kind for OnEvent.
func eventKind(o any) string {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	switch o.(type) {
	case *corev1.Service:
		return model.KindService
	case *discoveryv1.EndpointSlice:
		return model.KindEndpointSlice
	case *corev1.Pod:
		return model.KindPod
	case *corev1.Node:
		return "Node"
	}
	return model.KindAuthorizationPolicy // the dynamic informer's unstructured objects
}

// sameObjectVersion says whether two informer objects are the same version of one object.
func sameObjectVersion(a, b any) bool {
	am, aerr := meta.Accessor(a)
	bm, berr := meta.Accessor(b)
	return aerr == nil && berr == nil && am.GetResourceVersion() != "" && am.GetResourceVersion() == bm.GetResourceVersion()
}

// policiesServed says whether the API server serves AuthorizationPolicies (their CRD is
// installed); without it there are none to enforce, which is a warning, not a failure.
// It asks discovery, which every authenticated user may read, so the answer does not
// depend on the agent's permissions.
func (k *Kubernetes) policiesServed() error {
	notServed := fmt.Errorf("the API server does not serve %s (is Istio's CRD installed?)", AuthorizationPolicies.GroupResource())
	list, err := k.Client.Discovery().ServerResourcesForGroupVersion(AuthorizationPolicies.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return notServed
	}
	if err != nil {
		return err
	}
	for _, r := range list.APIResources {
		if r.Name == AuthorizationPolicies.Resource {
			return nil
		}
	}
	return notServed
}

// reportingInstance is NodeName, else the host name.
func (k *Kubernetes) reportingInstance() string {
	if k.NodeName != "" {
		return k.NodeName
	}
	host, _ := os.Hostname()
	return host
}

func (k *Kubernetes) deliverNoInput(why string) {
	if k.OnUpdate != nil {
		k.OnUpdate(Update{NoInput: why})
	}
}

// list reads every object the informers hold into one Decoded, as if read from a file:
// from here on both sources are the same.
func (k *Kubernetes) list(services func(labels.Selector) ([]*corev1.Service, error),
	slices func(labels.Selector) ([]*discoveryv1.EndpointSlice, error),
	pods func(labels.Selector) ([]*corev1.Pod, error), policies cache.GenericLister) (Decoded, error) {
	var d Decoded
	var err error
	if d.Services, err = services(labels.Everything()); err != nil {
		return d, err
	}
	if d.Slices, err = slices(labels.Everything()); err != nil {
		return d, err
	}
	if d.Pods, err = pods(labels.Everything()); err != nil {
		return d, err
	}
	if policies == nil {
		return d, nil
	}
	objs, err := policies.List(labels.Everything())
	if err != nil {
		return d, err
	}
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		js, err := json.Marshal(u.Object)
		if err != nil {
			return d, err
		}
		p, err := decodePolicy(js)
		if err != nil {
			// The API server validated its schema; what it let through and we cannot
			// read fails closed, as from a file.
			d.Rejected = append(d.Rejected, Rejected{Kind: model.KindAuthorizationPolicy, Namespace: u.GetNamespace(),
				Name: u.GetName(), Ours: true, PolicyLike: true, Err: model.ObjectError{Kind: model.KindAuthorizationPolicy,
					Namespace: u.GetNamespace(), Name: u.GetName(), Reason: ReasonMalformedObject, Message: oneLine(err.Error())}})
			continue
		}
		d.Policies = append(d.Policies, p)
	}
	return d, nil
}

// nodeZone is the node's topology.kubernetes.io/zone label ("" without the Node or the
// label: then no zone hint applies, as for kube-proxy).
func nodeZone(nodes corelisters.NodeLister, name string) string {
	if name == "" {
		return ""
	}
	n, err := nodes.Get(name)
	if err != nil {
		return ""
	}
	return n.Labels[corev1.LabelTopologyZone]
}

// dropManagedFields is the informers' transform: the field managers' records are most
// of a small object's size and nothing here reads them, so the caches (30k Services
// and their EndpointSlices, every pod) do not keep them.
func dropManagedFields(obj any) (any, error) {
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	return obj, nil
}
