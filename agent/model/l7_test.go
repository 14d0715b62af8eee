package model

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestL7AnnotationFailsClosedOnAnUnknownValue(t *testing.T) {
	mk := func(name, value string) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		if value != "" {
			s.Annotations = map[string]string{L7Annotation: value}
		}
		return s
	}
	a, b, c, d := mk("a", ""), mk("b", "true"), mk("c", "false"), mk("d", "yes")
	b.Spec.ClusterIP, c.Spec.ClusterIP, d.Spec.ClusterIP = "10.96.0.2", "10.96.0.3", "10.96.0.4"
	snap := Build([]*corev1.Service{a, b, c, d}, nil)
	want := map[string]bool{"a": false, "b": true, "c": false, "d": true}
	for _, svc := range snap.Services {
		if svc.L7 != want[svc.Name.Name] {
			t.Errorf("%s: L7 = %v, want %v", svc.Name, svc.L7, want[svc.Name.Name])
		}
	}
	if len(snap.Errors) != 1 || snap.Errors[0].Name != "d" || snap.Errors[0].Reason != ReasonInvalidAnnotation {
		t.Fatalf("errors %+v, want one invalid_annotation on d", snap.Errors)
	}
}
