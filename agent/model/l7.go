package model

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// L7Annotation marks a Service whose TCP connections must go through the node's Envoy.
const L7Annotation = "sockmesh.io/l7"

// readL7Annotation reads L7Annotation. A value other than "true" or "false" is reported
// and read as "true": a misspelt request for policy must fail closed, not bypass the
// proxy.
func (b *builder) readL7Annotation(svc *corev1.Service, report func(reason, msg string) ObjectError) bool {
	v, ok := svc.Annotations[L7Annotation]
	switch {
	case !ok || v == "false":
		return false
	case v == "true":
		return true
	}
	b.report(report(ReasonInvalidAnnotation, fmt.Sprintf(
		"annotation %s=%q: want \"true\" or \"false\"; treating it as \"true\" so traffic is not let past the proxy", L7Annotation, v)))
	return true
}

// decideL7 is the one place that decides which services go through the node's Envoy:
// the TCP frontends of Services that ask for it by annotation or that any
// AuthorizationPolicy applies to (a rejected policy too: it must fail closed, and only
// the proxy can deny). UDP cannot be proxied by the redirect and stays L4.
func (b *builder) decideL7() {
	for _, svc := range b.snap.Services {
		svc.L7 = svc.Frontend.Protocol == TCP && (b.annotatedL7[svc.Name] || len(b.snap.Policies[svc.Name]) > 0)
	}
}
