package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RBACManifest is the file whose ClusterRole grants every permission the agent needs.
const RBACManifest = "manifests/rbac.yaml"

// Permission is one request the agent must be allowed to make, cluster-wide.
type Permission struct {
	Verb     string
	Group    string // "" is the core group
	Resource string
}

// String is "VERB RESOURCE.GROUP", or "VERB RESOURCE" in the core group, as kubectl
// auth can-i spells it: "list pods", "watch endpointslices.discovery.k8s.io".
func (p Permission) String() string {
	if p.Group == "" {
		return p.Verb + " " + p.Resource
	}
	return p.Verb + " " + p.Resource + "." + p.Group
}

// requiredPermissions is what the source uses: list and watch for each informer
// (Services, EndpointSlices, Pods, this Node, and AuthorizationPolicies when the API server serves
// them), and create and patch on core/v1 Events (the recorder patches an event it
// aggregates).
func requiredPermissions(policies bool) []Permission {
	watched := []Permission{{Resource: "services"}, {Group: "discovery.k8s.io", Resource: "endpointslices"}, {Resource: "pods"}, {Resource: "nodes"}}
	if policies {
		watched = append(watched, Permission{Group: AuthorizationPolicies.Group, Resource: AuthorizationPolicies.Resource})
	}
	var out []Permission
	for _, w := range watched {
		for _, verb := range []string{"list", "watch"} {
			out = append(out, Permission{Verb: verb, Group: w.Group, Resource: w.Resource})
		}
	}
	return append(out, Permission{Verb: "create", Resource: "events"}, Permission{Verb: "patch", Resource: "events"})
}

// MissingPermissionsError says which permissions the API server denied the agent, and
// where they are granted.
type MissingPermissionsError struct {
	User    string // who the API server says we are; "" when it did not say
	Missing []Permission
}

func (e *MissingPermissionsError) Error() string {
	names := make([]string, len(e.Missing))
	for i, p := range e.Missing {
		names[i] = p.String()
	}
	who := "the agent"
	if e.User != "" {
		who = fmt.Sprintf("the agent (user %q)", e.User)
	}
	return fmt.Sprintf("--source kubernetes: %s may not %s; the ClusterRole in %s grants exactly what the agent needs: apply it and bind it to the agent's ServiceAccount",
		who, strings.Join(names, ", "), RBACManifest)
}

// checkPermissions asks the API server, one SelfSubjectAccessReview per permission
// (which every authenticated user may create), whether this client may do each of perms
// in every namespace. It returns a *MissingPermissionsError naming all those denied.
func checkPermissions(ctx context.Context, client kubernetes.Interface, perms []Permission) error {
	var missing []Permission
	for _, p := range perms {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: p.Verb, Group: p.Group, Resource: p.Resource},
		}}
		got, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("cannot check whether the agent may %s: %w", p, err)
		}
		if !got.Status.Allowed {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &MissingPermissionsError{User: whoAmI(ctx, client), Missing: missing}
}

// whoAmI is the user name the API server authenticates this client as (a
// SelfSubjectReview, open to every authenticated user), or "" if it cannot tell.
func whoAmI(ctx context.Context, client kubernetes.Interface) string {
	r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return ""
	}
	return r.Status.UserInfo.Username
}

// permissionRetry bounds the wait between checks the API server could not answer.
const (
	permissionRetryFirst = time.Second
	permissionRetryMax   = 30 * time.Second
)

// waitForPermissions runs checkPermissions until it has an answer: nil, or the
// permissions that are missing. An API server that cannot be reached (or answers with
// a server error) is retried with backoff, like the informers would: an outage at start
// is not a reason to exit. Credentials the API server refuses are.
func waitForPermissions(ctx context.Context, log *slog.Logger, client kubernetes.Interface, perms []Permission) error {
	delay := permissionRetryFirst
	for {
		err := checkPermissions(ctx, client, perms)
		var missing *MissingPermissionsError
		switch {
		case err == nil || errors.As(err, &missing):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
			return fmt.Errorf("--source kubernetes: the API server refused the agent's credentials: %w", err)
		}
		log.Warn("cannot check the agent's permissions yet; retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, permissionRetryMax)
	}
}
