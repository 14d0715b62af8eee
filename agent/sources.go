package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sockmesh/sockmesh/agent/source"
)

// inputSource is what the run loop needs of a source: both deliver source.Updates into
// the same Store semantics.
type inputSource interface {
	Run(ctx context.Context) error
	Store() *source.Store
}

// newSource makes the --source the flags name. It only builds clients; nothing is read
// or watched until Run, so a bad kubeconfig fails the start before the datapath changes.
func newSource(cfg Config, log *slog.Logger, deliver func(source.Update)) (inputSource, error) {
	if path, ok := cfg.FilePath(); ok {
		f := source.NewFile(path, deliver)
		f.MaxBytes = cfg.MaxInputBytes
		return f, nil
	}
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "sockmesh-agent/" + cfg.NodeName
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("--source kubernetes: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("--source kubernetes: %w", err)
	}
	return &source.Kubernetes{Client: client, Dynamic: dyn, Log: log, OnUpdate: deliver, NodeName: cfg.NodeName}, nil
}

// restConfig finds the API server: --kubeconfig, else $KUBECONFIG, else the in-cluster
// service account.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("--source kubernetes: no --kubeconfig, no $KUBECONFIG, and not in a cluster: %w", err)
	}
	return rc, nil
}
