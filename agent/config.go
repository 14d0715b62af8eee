// Package agent is the sockmesh node agent: its configuration, the run loop that feeds
// source snapshots to the reconcilers, metrics and the HTTP endpoints. Sources live in
// agent/source, the model in agent/model, the LB map writer in agent/lbmap.
package agent

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sockmesh/sockmesh/agent/maglev"
	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/agent/source"
	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/sockops"
	"github.com/sockmesh/sockmesh/xds"
	"golang.org/x/sys/unix"
)

// Config is everything `sockmesh agent` is told on its command line.
type Config struct {
	Source string // "kubernetes" or "file:PATH"
	// Kubeconfig is for the kubernetes source outside a cluster; empty: $KUBECONFIG,
	// else the in-cluster config.
	Kubeconfig string
	NodeName   string
	CgroupPath string // cgroup v2 dir the socket hooks attach to
	BPFFS      string // pin dir
	HTTPListen string // /metrics /healthz /readyz
	// DebugListen serves /debug/state (and the HTTPListen paths) on a root-only unix
	// socket, "unix:PATH": the state lists every service, backend and policy, which is
	// not for every local user. Empty = off.
	DebugListen string
	XDSListen   string // ADS for the node's Envoy and proxyless gRPC: unix:PATH or tcp:HOST:PORT; empty = off
	MaxServices int
	MaxBackends int
	// MaxInputBytes bounds the input file: decoding costs several times its size.
	MaxInputBytes int64
	// XDSMaxStreams bounds the concurrent ADS streams.
	XDSMaxStreams int
	// RepairInterval is how often the LB maps are read back and any drift from what the
	// agent programmed is repaired.
	RepairInterval time.Duration
	// EnvoyRedirect is where connections to L7 services go: "IP:PORT", or one IPv4 and
	// one IPv6 "IP:PORT" separated by a comma. Empty: the node's IPv4 address, port 15001.
	EnvoyRedirect string
	EnvoyMark     uint32 // SO_MARK on Envoy's own sockets: never redirected
	Splice        string // auto | on | off
	// HealthCheckBind is the address the healthCheckNodePort servers listen on; empty:
	// every address, as kube-proxy's default.
	HealthCheckBind string
	// Devices are the NodePort devices: the XDP and tc programs serve NodePort,
	// externalIP and LoadBalancer frontends on them. Empty: no NodePort datapath.
	Devices []string
	// NodePortMode is how a backend on another node is reached: snat, dsr (the
	// client's address kept, the reply straight from the backend's node) or
	// hybrid (dsr for TCP, snat for UDP).
	NodePortMode string
	// XDP is native, generic or off: whether the XDP program runs before tc.
	XDP string
	// TCAttach is auto, tcx or netlink: how the tc programs attach (auto: TCX where the
	// kernel has it, else netlink clsact filters).
	TCAttach string
	// NodePortRange is "MIN-MAX", kube-apiserver's --service-node-port-range.
	NodePortRange string
	// MaglevTableSize is the prime size of the Maglev tables; MaglevSeed their seed and
	// the flow hash's, the same on every node so a flow keeps its backend across nodes.
	MaglevTableSize uint32
	MaglevSeed      uint32
}

// DefaultMaglevSeed is the Maglev seed unless --maglev-seed says otherwise.
const DefaultMaglevSeed = 0x5eed5eed

// DefaultEnvoyPort is Envoy's redirect listener port when --envoy-redirect names none.
const DefaultEnvoyPort = 15001

// DefaultEnvoyMark is the SO_MARK Envoy's upstream sockets carry, as in Istio (1337).
const DefaultEnvoyMark = 0x539

// DefaultBPFFS is where the agent pins its maps and links.
const DefaultBPFFS = "/sys/fs/bpf/sockmesh"

// DefaultXDSListen is a socket only root can use: xDS shows every service.
const DefaultXDSListen = "unix:/run/sockmesh/xds.sock"

// DefaultHTTPListen serves metrics and health on loopback only.
const DefaultHTTPListen = "127.0.0.1:9964"

// DefaultDebugListen is a socket only root can use: the state shows every service.
const DefaultDebugListen = "unix:/run/sockmesh/debug.sock"

// DefaultRepairInterval is how often the maps are checked for drift.
const DefaultRepairInterval = 30 * time.Second

// DefaultConfig returns the agent's defaults; the cgroup is found at start.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:        host,
		BPFFS:           DefaultBPFFS,
		HTTPListen:      DefaultHTTPListen,
		DebugListen:     DefaultDebugListen,
		XDSListen:       DefaultXDSListen,
		MaxServices:     bpf.DefaultLimits.MaxServices,
		MaxBackends:     bpf.DefaultLimits.MaxBackends,
		MaxInputBytes:   source.DefaultMaxBytes,
		XDSMaxStreams:   xds.DefaultLimits.MaxStreams,
		RepairInterval:  DefaultRepairInterval,
		EnvoyMark:       DefaultEnvoyMark,
		Splice:          "auto",
		NodePortMode:    "snat",
		XDP:             string(bpf.XDPOff),
		TCAttach:        string(bpf.TCAuto),
		NodePortRange:   model.DefaultNodePortRange.String(),
		MaglevTableSize: maglev.DefaultSize,
		MaglevSeed:      DefaultMaglevSeed,
	}
}

// RedirectAddrs parses EnvoyRedirect: at most one address per family.
func (c Config) RedirectAddrs() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	seen := map[bool]bool{}
	for _, part := range strings.Split(c.EnvoyRedirect, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(part)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("--envoy-redirect %q: want IP:PORT[,IP:PORT]", c.EnvoyRedirect)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if seen[ap.Addr().Is4()] {
			return nil, fmt.Errorf("--envoy-redirect %q: one address per IP family", c.EnvoyRedirect)
		}
		seen[ap.Addr().Is4()] = true
		out = append(out, ap)
	}
	return out, nil
}

// FilePath returns PATH for a "file:PATH" source.
func (c Config) FilePath() (string, bool) {
	p, ok := strings.CutPrefix(c.Source, "file:")
	return p, ok
}

// Validate checks the flags and fills in the cgroup default; every error names the flag.
func (c *Config) Validate() error {
	var errs []error
	switch p, ok := c.FilePath(); {
	case ok && p == "":
		errs = append(errs, errors.New("--source file:PATH needs a path"))
	case ok:
	case c.Source == "kubernetes":
	default:
		errs = append(errs, fmt.Errorf("--source %q: want file:PATH or kubernetes", c.Source))
	}
	if c.MaxServices < 1 || c.MaxServices > 1<<24 {
		errs = append(errs, fmt.Errorf("--max-services %d: want 1..%d", c.MaxServices, 1<<24))
	}
	if c.MaxBackends < 1 || c.MaxBackends > 1<<24 {
		errs = append(errs, fmt.Errorf("--max-backends %d: want 1..%d", c.MaxBackends, 1<<24))
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			errs = append(errs, fmt.Errorf("--http-listen %q: %v", c.HTTPListen, err))
		}
	}
	if c.DebugListen != "" {
		if p, ok := strings.CutPrefix(c.DebugListen, "unix:"); !ok || p == "" {
			errs = append(errs, fmt.Errorf("--debug-listen %q: want unix:PATH (the state is for root only)", c.DebugListen))
		}
	}
	if c.MaxInputBytes < 1 {
		errs = append(errs, fmt.Errorf("--max-input-bytes %d: want a positive size", c.MaxInputBytes))
	}
	if c.XDSMaxStreams < 1 {
		errs = append(errs, fmt.Errorf("--xds-max-streams %d: want at least 1", c.XDSMaxStreams))
	}
	if c.RepairInterval < time.Second {
		errs = append(errs, fmt.Errorf("--map-repair-interval %s: want at least 1s", c.RepairInterval))
	}
	// Mark 0 is every unmarked socket's: the programs would take every application for
	// Envoy and never redirect anything to it.
	if c.EnvoyMark == 0 {
		errs = append(errs, errors.New("--envoy-mark 0: every unmarked socket carries mark 0, so no connection would be redirected to Envoy; use Envoy's upstream mark (default 0x539)"))
	}
	if _, err := c.RedirectAddrs(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := (sockops.Settings{Splice: c.Splice}).Config(); err != nil {
		errs = append(errs, err)
	}
	if c.XDSListen != "" {
		if _, _, err := xds.ParseListen(c.XDSListen); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.HealthCheckAddr(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.NodePorts(); err != nil {
		errs = append(errs, err)
	}
	switch c.NodePortMode {
	case "snat", "dsr", "hybrid":
	default:
		errs = append(errs, fmt.Errorf("--nodeport-mode %q: want snat, dsr or hybrid", c.NodePortMode))
	}
	if err := maglev.ValidSize(c.MaglevTableSize); err != nil {
		errs = append(errs, fmt.Errorf("--maglev-table-size: %v", err))
	}
	switch bpf.TCAttach(c.TCAttach) {
	case bpf.TCAuto, bpf.TCX, bpf.TCNetlink:
	default:
		errs = append(errs, fmt.Errorf("--tc-attach %q: want auto, tcx or netlink", c.TCAttach))
	}
	switch bpf.XDPMode(c.XDP) {
	case bpf.XDPNative, bpf.XDPGeneric, bpf.XDPOff:
	default:
		errs = append(errs, fmt.Errorf("--xdp %q: want native, generic or off", c.XDP))
	}
	for _, d := range c.Devices {
		if d == "" || len(d) >= unix.IFNAMSIZ || strings.ContainsAny(d, "/ ") {
			errs = append(errs, fmt.Errorf("--devices: %q is not a network device name", d))
		}
	}
	if c.BPFFS == "" {
		errs = append(errs, errors.New("--bpffs must not be empty"))
	}
	if c.CgroupPath == "" {
		root, err := CgroupV2Root()
		if err != nil {
			errs = append(errs, fmt.Errorf("--cgroup not given and %v", err))
		}
		c.CgroupPath = root
	} else if err := checkCgroup2(c.CgroupPath); err != nil {
		// Checked here, not at attach: by then the programs' config would be set.
		errs = append(errs, fmt.Errorf("--cgroup %s: %v", c.CgroupPath, err))
	}
	return errors.Join(errs...)
}

// NodePorts is NodePortRange parsed.
func (c *Config) NodePorts() (model.PortRange, error) {
	lo, hi, ok := strings.Cut(c.NodePortRange, "-")
	a, errA := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, errB := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if !ok || errA != nil || errB != nil || a == 0 || a > b {
		return model.PortRange{}, fmt.Errorf("--node-port-range %q: want MIN-MAX within 1-65535, such as %s", c.NodePortRange, model.DefaultNodePortRange)
	}
	return model.PortRange{Min: uint16(a), Max: uint16(b)}, nil
}

// HealthCheckAddr is HealthCheckBind parsed: the zero Addr for every address.
func (c *Config) HealthCheckAddr() (netip.Addr, error) {
	if c.HealthCheckBind == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(c.HealthCheckBind)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("--health-check-bind-address %q: want an IP address, or empty for every address", c.HealthCheckBind)
	}
	return a, nil
}

// checkCgroup2 says whether path is a cgroup v2 directory the hooks can attach to.
func checkCgroup2(path string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return err
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return errors.New("not a cgroup v2 directory")
	}
	return nil
}

// CgroupV2Root finds the cgroup2 mount (on hybrid systems, /sys/fs/cgroup/unified).
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", errors.New("no cgroup2 filesystem is mounted")
}

// npMode is NodePortMode as the datapath spells it.
func (c *Config) npMode() uint32 {
	switch c.NodePortMode {
	case "dsr":
		return bpf.NPModeDSR
	case "hybrid":
		return bpf.NPModeHybrid
	}
	return bpf.NPModeSNAT
}
