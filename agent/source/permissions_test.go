package source

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// testUser is who the fake API server says the agent is.
const testUser = "system:serviceaccount:sockmesh-system:sockmesh"

// grant answers the fake clientset's SelfSubjectAccessReviews: allowed unless the
// permission is in denied. SelfSubjectReviews answer testUser.
func grant(client *fake.Clientset, denied map[Permission]bool) {
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		attrs := review.Spec.ResourceAttributes
		review.Status.Allowed = !denied[Permission{Verb: attrs.Verb, Group: attrs.Group, Resource: attrs.Resource}]
		return true, review, nil
	})
	client.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{
			UserInfo: authenticationv1.UserInfo{Username: testUser}}}, nil
	})
}

// servePolicies makes the fake discovery list AuthorizationPolicies, as an API server
// with Istio's CRD installed does.
func servePolicies(client *fake.Clientset) {
	client.Resources = append(client.Resources, &metav1.APIResourceList{
		GroupVersion: AuthorizationPolicies.GroupVersion().String(),
		APIResources: []metav1.APIResource{{Name: AuthorizationPolicies.Resource, Namespaced: true, Kind: "AuthorizationPolicy"}},
	})
}

// runOnce runs the source until it returns or the timeout passes (then it is stopped).
func runOnce(t *testing.T, k *Kubernetes, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return k.Run(ctx)
}

// A missing permission ends Run at once, and the error names every missing one as
// kubectl auth can-i spells it, who was denied, and the manifest that grants them.
func TestRunNamesEachMissingPermission(t *testing.T) {
	client := fake.NewClientset()
	grant(client, map[Permission]bool{
		{Verb: "list", Resource: "pods"}:                                       true,
		{Verb: "watch", Resource: "pods"}:                                      true,
		{Verb: "watch", Group: "discovery.k8s.io", Resource: "endpointslices"}: true,
		{Verb: "create", Resource: "events"}:                                   true,
	})
	start := time.Now()
	err := runOnce(t, &Kubernetes{Client: client}, 10*time.Second)
	var missing *MissingPermissionsError
	if !errors.As(err, &missing) {
		t.Fatalf("Run: %v; want a *MissingPermissionsError", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Run took %v to fail", took)
	}
	msg := err.Error()
	for _, want := range []string{
		"may not watch endpointslices.discovery.k8s.io, list pods, watch pods, create events;",
		`user "` + testUser + `"`,
		"the ClusterRole in manifests/rbac.yaml grants",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
}

// AuthorizationPolicies are checked only when the API server serves them: without
// Istio's CRD their permissions are not needed.
func TestPolicyPermissionsAreCheckedOnlyWhenServed(t *testing.T) {
	listPolicies := Permission{Verb: "list", Group: "security.istio.io", Resource: "authorizationpolicies"}
	denied := map[Permission]bool{listPolicies: true}

	withoutCRD := fake.NewClientset()
	grant(withoutCRD, denied)
	if err := runOnce(t, &Kubernetes{Client: withoutCRD, Dynamic: newFakeDynamic()}, 300*time.Millisecond); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("without the CRD: %v; want the source to run", err)
	}

	withCRD := fake.NewClientset()
	grant(withCRD, denied)
	servePolicies(withCRD)
	err := runOnce(t, &Kubernetes{Client: withCRD, Dynamic: newFakeDynamic()}, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "may not list authorizationpolicies.security.istio.io;") {
		t.Errorf("with the CRD: %v; want list authorizationpolicies.security.istio.io named", err)
	}
}

// An API server that cannot answer yet is asked again; credentials it refuses end Run.
func TestPermissionCheckRetriesOutagesButNotRefusals(t *testing.T) {
	flaky := fake.NewClientset()
	grant(flaky, nil)
	var failures atomic.Int32
	flaky.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failures.Add(1) == 1 {
			return true, nil, apierrors.NewServiceUnavailable("etcd is starting")
		}
		return false, nil, nil // on to grant's reactor
	})
	err := waitForPermissions(context.Background(), discardLog(), flaky, requiredPermissions(false))
	if err != nil || failures.Load() < 2 {
		t.Errorf("after one outage: %v (%d attempts); want a retry that succeeds", err, failures.Load())
	}

	refused := fake.NewClientset()
	refused.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewUnauthorized("token expired")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = waitForPermissions(ctx, discardLog(), refused, requiredPermissions(false))
	if err == nil || !apierrors.IsUnauthorized(err) || !strings.Contains(err.Error(), "refused the agent's credentials") {
		t.Errorf("refused credentials: %v; want an error at once", err)
	}
}

// The permissions are exactly what the informers and the event recorder use.
func TestRequiredPermissions(t *testing.T) {
	var got []string
	for _, p := range requiredPermissions(true) {
		got = append(got, p.String())
	}
	want := "list services, watch services, list endpointslices.discovery.k8s.io, watch endpointslices.discovery.k8s.io, " +
		"list pods, watch pods, list nodes, watch nodes, list authorizationpolicies.security.istio.io, watch authorizationpolicies.security.istio.io, " +
		"create events, patch events"
	if s := strings.Join(got, ", "); s != want {
		t.Errorf("requiredPermissions(true) = %s\nwant %s", s, want)
	}
}

// newFakeDynamic is a dynamic client that holds no AuthorizationPolicies.
func newFakeDynamic() *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{AuthorizationPolicies: "AuthorizationPolicyList"})
}

// discardLog is a logger for tests that check results, not log lines.
func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
