package agent

import (
	"os"
	"strings"
	"testing"
)

func TestValidateNamesEveryBadFlag(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Source = "etcd:foo"
	cfg.MaxServices = 0
	cfg.MaxBackends = 1 << 30
	cfg.HTTPListen = "localhost"
	cfg.BPFFS = ""
	cfg.CgroupPath = "/sys/fs/cgroup/x"
	cfg.HealthCheckBind = "10.0.0.300"
	cfg.NodePortMode, cfg.XDP, cfg.TCAttach = "maglev", "fast", "bpf"
	cfg.NodePortRange, cfg.MaglevTableSize = "32767-30000", 250
	cfg.Devices = []string{"eth0", "a/b"}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`--source "etcd:foo"`, "--max-services 0", "--max-backends", "--http-listen", "--bpffs", `--health-check-bind-address "10.0.0.300"`,
		`--nodeport-mode "maglev"`, `--xdp "fast"`, `--tc-attach "bpf"`, `--node-port-range "32767-30000"`, "--maglev-table-size", `--devices: "a/b"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestValidateAcceptsFileSourceAndFindsCgroup(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Source = "file:/etc/sockmesh/services.yaml"
	if _, err := CgroupV2Root(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI machines must have cgroup v2: %v", err)
		}
		t.Skipf("no cgroup2 mount here: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if p, ok := cfg.FilePath(); !ok || p != "/etc/sockmesh/services.yaml" || cfg.CgroupPath == "" {
		t.Fatalf("path %q ok %v cgroup %q", p, ok, cfg.CgroupPath)
	}
	cfg.Source = "kubernetes"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("kubernetes source: %v", err)
	}
}
