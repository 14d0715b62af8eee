package source

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestInformerTransformDropsManagedFieldsOnly(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", ResourceVersion: "7",
		Annotations:   map[string]string{"sockmesh.io/l7": "true"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}}
	out, err := dropManagedFields(svc)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Service)
	if got.ManagedFields != nil {
		t.Fatalf("managedFields kept: %v", got.ManagedFields)
	}
	if got.Name != "web" || got.ResourceVersion != "7" || got.Annotations["sockmesh.io/l7"] != "true" || got.Spec.ClusterIP != "10.96.0.10" {
		t.Fatalf("the transform changed more than managedFields: %+v", got)
	}
	// A tombstone is not an object: passed through.
	tomb := "not an object"
	if out, err := dropManagedFields(tomb); err != nil || out != tomb {
		t.Fatalf("tombstone: %v, %v", out, err)
	}
}
