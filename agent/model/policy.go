package model

import (
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthorizationPolicy is the subset of Istio's security.istio.io/v1 AuthorizationPolicy
// that sockmesh enforces, in Istio's own YAML shape. Fields outside the subset are listed
// in Unsupported by the decoder; such a policy is rejected and its services fail closed.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AuthorizationPolicySpec `json:"spec"`
	// Unsupported holds the paths of input fields outside the subset
	// (e.g. "spec.rules[0].from[0].source.requestPrincipals").
	Unsupported []string `json:"-"`
	// Unreadable marks a policy-like object the source could not read (a type error, an
	// apiVersion or kind it does not know): only its name is known, so it denies every
	// request to every service of its namespace until it is fixed. The source reports
	// why; Build only applies it.
	Unreadable bool `json:"-"`
}

// AuthorizationPolicySpec is Istio's spec: which workloads, which action, which rules.
type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector `json:"selector,omitempty"`
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`
	Action     string            `json:"action,omitempty"` // ALLOW (default) or DENY
	Rules      []PolicyRule      `json:"rules,omitempty"`
}

// WorkloadSelector selects the pods a policy applies to.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// PolicyTargetRef names a Service in the policy's namespace.
type PolicyTargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// PolicyRule matches a request when every one of its parts does: any of From, any of To,
// all of When. An empty part matches everything.
type PolicyRule struct {
	From []PolicyFrom      `json:"from,omitempty"`
	To   []PolicyTo        `json:"to,omitempty"`
	When []PolicyCondition `json:"when,omitempty"`
}

// PolicyFrom wraps a source, as in Istio.
type PolicyFrom struct {
	Source PolicySource `json:"source"`
}

// PolicySource matches the peer: all set fields must match, any value of a field.
type PolicySource struct {
	Principals    []string `json:"principals,omitempty"`
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	Namespaces    []string `json:"namespaces,omitempty"`
	NotNamespaces []string `json:"notNamespaces,omitempty"`
	IPBlocks      []string `json:"ipBlocks,omitempty"`
	NotIPBlocks   []string `json:"notIpBlocks,omitempty"`
}

// PolicyTo wraps an operation, as in Istio.
type PolicyTo struct {
	Operation PolicyOperation `json:"operation"`
}

// PolicyOperation matches the request: all set fields must match, any value of a field.
type PolicyOperation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// PolicyCondition is one "when" entry; sockmesh supports request.headers[NAME] keys.
type PolicyCondition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// PolicyName names an AuthorizationPolicy.
type PolicyName struct {
	Namespace string
	Name      string
}

func (n PolicyName) String() string { return n.Namespace + "/" + n.Name }

// PolicyAction is what a matching policy rule does.
type PolicyAction uint8

// Actions, evaluated Istio's way: any matching DENY denies; then, if any ALLOW policy
// applies to the service, a request must match one of its rules; else it is allowed.
const (
	PolicyAllow PolicyAction = iota
	PolicyDeny
)

func (a PolicyAction) String() string {
	if a == PolicyDeny {
		return "DENY"
	}
	return "ALLOW"
}

// Policy is an AuthorizationPolicy resolved against the model: peer identities are
// turned into the pod addresses that carry them, ports into numbers.
type Policy struct {
	Name   PolicyName
	Action PolicyAction
	Rules  []Rule
	// Rejected policies use something outside the supported subset. The services they
	// target deny every request (fail closed) until the policy is fixed or deleted.
	Rejected bool
}

// Rule is a resolved PolicyRule. A nil From, To or When matches everything.
type Rule struct {
	From []Source
	To   []Operation
	When []Condition
}

// Source is a resolved PolicySource. Each field, when set, is the set of peer addresses
// that match it (possibly empty, which matches no peer).
type Source struct {
	Principals, NotPrincipals *Peers
	Namespaces, NotNamespaces *Peers
	IPBlocks, NotIPBlocks     *Peers
}

// Peers is a set of peer addresses.
type Peers struct{ Prefixes []netip.Prefix }

// Operation is a resolved PolicyOperation. Hosts, methods and paths are Istio string
// patterns: exact, "prefix*", "*suffix" or "*".
type Operation struct {
	Hosts, NotHosts     []string
	Ports, NotPorts     []uint16
	Methods, NotMethods []string
	Paths, NotPaths     []string
}

// HTTPOnly reports whether the operation uses fields a plain TCP connection does not have.
func (o Operation) HTTPOnly() bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0
}

// Condition is a resolved "when": a request header matching any of Values and none of
// NotValues (patterns as in Operation).
type Condition struct {
	Header    string
	Values    []string
	NotValues []string
}

// Pod is what policies need of a pod: its identity and its addresses.
type Pod struct {
	Namespace      string
	Name           string
	ServiceAccount string
	Labels         map[string]string
	IPs            []netip.Addr
}

// Principal is the pod's identity as Istio spells it (trust domain cluster.local).
func (p Pod) Principal() string {
	return TrustDomain + "/ns/" + p.Namespace + "/sa/" + p.ServiceAccount
}

// TrustDomain is the trust domain of principals. sockmesh knows peers by address, not
// by certificate, so it is fixed to Kubernetes' default.
const TrustDomain = "cluster.local"
