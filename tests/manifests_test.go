package tests

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockmesh/sockmesh/tests/harness"
)

// Every manifest builds with kustomize and is accepted by a real API server (server-side
// dry-run, strict field validation).
func TestManifestsBuildAndAreAcceptedByARealAPIServer(t *testing.T) {
	api := harness.StartAPIServer(t)
	// Dry-run objects of a namespace need the namespace itself to exist.
	if _, err := api.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sockmesh-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"manifests", "manifests/cleanup"} {
		built, err := exec.Command("kubectl", "kustomize", filepath.Join("..", dir)).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, built)
		}
		if n := strings.Count(string(built), "\nkind: ") + strings.Count(string(built)[:min(len(built), 6)], "kind: "); n == 0 {
			t.Fatalf("kubectl kustomize %s built no objects", dir)
		}
		cmd := exec.Command("kubectl", "--kubeconfig", api.Kubeconfig, "apply", "--server-side", "--dry-run=server",
			"--field-manager=sockmesh-test", "--validate=strict", "-f", "-")
		cmd.Stdin = strings.NewReader(string(built))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("server-side dry-run of %s: %v\n%s", dir, err, out)
		} else {
			t.Logf("%s:\n%s", dir, out)
		}
	}
}
