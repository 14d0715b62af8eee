package source

import (
	"strings"

	"github.com/sockmesh/sockmesh/agent/model"
)

// Reasons of object-level decode errors (metric label values, never renamed).
const (
	// ReasonUnknownKind: a kind no Kubernetes or Istio release has, most likely a typo.
	ReasonUnknownKind = "unknown_kind"
	// ReasonUnsupportedAPIVersion: a kind sockmesh reads, at an apiVersion it does not.
	ReasonUnsupportedAPIVersion = "unsupported_api_version"
)

// supported are the apiVersions sockmesh reads each of its kinds at.
var supported = map[string][]string{
	model.KindService:             {"v1"},
	model.KindEndpointSlice:       {"discovery.k8s.io/v1"},
	model.KindPod:                 {"v1"},
	model.KindAuthorizationPolicy: {"security.istio.io/v1", "security.istio.io/v1beta1"},
}

// ignoredKinds are kinds that real manifests hold beside Services and that sockmesh has
// no use for, by API group ("" is the core group). They are counted, not reported: a
// file shared with other tools is fine. Anything not here and not read is reported.
var ignoredKinds = map[string][]string{
	"":                             {"ConfigMap", "Secret", "Namespace", "ServiceAccount", "Endpoints", "Event", "Node", "LimitRange", "ResourceQuota", "PersistentVolume", "PersistentVolumeClaim", "ReplicationController", "PodTemplate"},
	"apps":                         {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ControllerRevision"},
	"batch":                        {"Job", "CronJob"},
	"autoscaling":                  {"HorizontalPodAutoscaler"},
	"policy":                       {"PodDisruptionBudget"},
	"networking.k8s.io":            {"NetworkPolicy", "Ingress", "IngressClass"},
	"rbac.authorization.k8s.io":    {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"},
	"storage.k8s.io":               {"StorageClass", "CSIDriver"},
	"scheduling.k8s.io":            {"PriorityClass"},
	"coordination.k8s.io":          {"Lease"},
	"apiextensions.k8s.io":         {"CustomResourceDefinition"},
	"admissionregistration.k8s.io": {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"},
	"gateway.networking.k8s.io":    {"Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute", "ReferenceGrant"},
	"networking.istio.io":          {"VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "EnvoyFilter", "WorkloadEntry", "WorkloadGroup", "ProxyConfig"},
	"security.istio.io":            {"PeerAuthentication", "RequestAuthentication"},
	"telemetry.istio.io":           {"Telemetry"},
}

// kindClass is what the decoder does with one apiVersion and kind.
type kindClass uint8

const (
	classRead     kindClass = iota // one of ours at a version we read
	classOtherVer                  // one of ours at a version we do not read
	classIgnored                   // a known kind we have no use for
	classUnknown                   // nothing we know: a typo, or a CRD of another tool
)

// classify places an object's apiVersion and kind.
func classify(apiVersion, kind string) kindClass {
	if versions, ours := supported[kind]; ours {
		for _, v := range versions {
			if v == apiVersion {
				return classRead
			}
		}
		return classOtherVer
	}
	group, _, _ := strings.Cut(apiVersion, "/")
	if !strings.Contains(apiVersion, "/") {
		group = ""
	}
	for _, k := range ignoredKinds[group] {
		if k == kind {
			return classIgnored
		}
	}
	return classUnknown
}

// policyLike says whether an object sockmesh could not read may have been meant as an
// AuthorizationPolicy: Istio's security group, or a kind that is a near miss of the name.
// Such an object fails closed for its namespace, since skipping it would fail open.
func policyLike(apiVersion, kind string) bool {
	if kind == model.KindAuthorizationPolicy {
		return true
	}
	group, _, _ := strings.Cut(apiVersion, "/")
	if group == "security.istio.io" && classify(apiVersion, kind) != classIgnored {
		return true
	}
	k := strings.ToLower(kind)
	return strings.Contains(k, "authori") || editDistance(k, "authorizationpolicy") <= 3
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
