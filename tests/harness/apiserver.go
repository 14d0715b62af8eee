package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// APIServer is a real kube-apiserver (built from k8s.io/kubernetes by
// scripts/kube-apiserver.sh) with its own etcd, both child processes of the test, on free
// loopback ports, with every file in a temp dir. There is no controller manager, scheduler
// or kubelet: objects are stored and watched, nothing acts on them (no EndpointSlices
// for Services unless the test writes them, no namespace finalization, no garbage
// collection).
//
// Authentication is by bearer token only: the admin token (group system:masters) from a
// static token file, extra static tokens (AddToken), and real ServiceAccount tokens
// (ServiceAccountToken). Authorization is RBAC.
type APIServer struct {
	// Kubeconfig is the path of a kubeconfig file for the admin user.
	Kubeconfig string
	// Config is the admin user's client config; copy it before changing it.
	Config *rest.Config
	// Client is a clientset for the admin user.
	Client kubernetes.Interface
	// URL is the secure endpoint, https://127.0.0.1:PORT.
	URL string
	// AdminToken authenticates as user "admin" in group system:masters.
	AdminToken string
	// CACert is the PEM of the CA that signed the serving certificate.
	CACert []byte
	// Dir holds etcd's data, the keys, the token file and both logs.
	Dir string

	bin       string
	etcdURL   string
	port      int
	tokenFile string

	mu        sync.Mutex
	tokens    []staticToken
	etcd      *child
	apiserver *child
}

// staticToken is one line of kube-apiserver's --token-auth-file.
type staticToken struct {
	token, user string
	groups      []string
}

// Admin user of the static token file.
const apiServerAdmin = "admin"

// ServiceClusterIPRange is the API server's --service-cluster-ip-range: ClusterIPs that
// tests set must be inside it; the default/kubernetes Service gets 10.96.0.1.
const ServiceClusterIPRange = "10.96.0.0/16"

// apiServerReadyTimeout bounds the wait for /readyz after each start.
const apiServerReadyTimeout = 60 * time.Second

// StartAPIServer starts etcd and kube-apiserver, waits until /readyz answers ok, and stops
// and removes both in t.Cleanup, also when the test fails. It needs no root.
func StartAPIServer(t testing.TB) *APIServer {
	t.Helper()
	s := &APIServer{Dir: t.TempDir(), bin: kubeAPIServerBinary(t)}
	t.Cleanup(s.stopAll)

	s.startEtcd(t)
	s.writeKeys(t)
	s.AdminToken = randomToken(t)
	s.tokens = []staticToken{{token: s.AdminToken, user: apiServerAdmin, groups: []string{"system:masters"}}}
	s.tokenFile = filepath.Join(s.Dir, "tokens.csv")
	s.writeTokenFile(t)
	s.port = freeLoopbackPort(t)
	s.URL = "https://127.0.0.1:" + strconv.Itoa(s.port)

	s.Config = s.ConfigFor(s.AdminToken)
	client, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	s.Client = client
	s.Kubeconfig = s.WriteKubeconfig(t, apiServerAdmin, s.AdminToken)

	s.startAPIServer(t)
	return s
}

// Stop stops kube-apiserver (SIGTERM, then SIGKILL after a grace period); etcd keeps
// running, so Restart brings the same objects back on the same port.
func (s *APIServer) Stop() {
	s.mu.Lock()
	c := s.apiserver
	s.apiserver = nil
	s.mu.Unlock()
	if c != nil {
		c.stop(15 * time.Second)
	}
}

// Kill ends kube-apiserver with SIGKILL, like a crash: no graceful shutdown, watches
// and connections just break. etcd keeps running; Restart starts it again.
func (s *APIServer) Kill() {
	s.mu.Lock()
	c := s.apiserver
	s.apiserver = nil
	s.mu.Unlock()
	if c != nil {
		c.kill()
	}
}

// Restart stops kube-apiserver if it is running and starts it again against the same
// etcd, on the same port, with the current token file; it returns once /readyz is ok.
func (s *APIServer) Restart(t testing.TB) {
	t.Helper()
	start := time.Now()
	s.Stop()
	t.Logf("kube-apiserver stopped in %v", time.Since(start).Round(time.Millisecond))
	s.startAPIServer(t)
}

// AddToken adds a static bearer token for user in groups to the token file and returns
// it. kube-apiserver reads that file only when it starts: call Restart before using the
// token. ServiceAccountToken needs no restart and is the realistic choice for an
// in-cluster identity; AddToken suits users that are not ServiceAccounts.
func (s *APIServer) AddToken(t testing.TB, user string, groups ...string) string {
	t.Helper()
	token := randomToken(t)
	s.mu.Lock()
	s.tokens = append(s.tokens, staticToken{token: token, user: user, groups: groups})
	s.mu.Unlock()
	s.writeTokenFile(t)
	return token
}

// ServiceAccountToken creates the ServiceAccount namespace/name if it does not exist and
// returns a token for it from the TokenRequest API, valid for an hour (also across
// Restart: the signing key stays). The API server authenticates it as
// system:serviceaccount:NAMESPACE:NAME in groups system:serviceaccounts and
// system:serviceaccounts:NAMESPACE, so RBAC bindings to that ServiceAccount apply. The
// namespace must exist.
func (s *APIServer) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := s.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ServiceAccount %s/%s: %v", namespace, name, err)
	}
	hour := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour}}
	resp, err := s.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for ServiceAccount %s/%s: %v", namespace, name, err)
	}
	return resp.Status.Token
}

// ConfigFor is a client config for the API server that authenticates with token.
func (s *APIServer) ConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CACert},
		QPS:             100,
		Burst:           200,
	}
}

// WriteKubeconfig writes a kubeconfig file that authenticates with token (as user, a
// name inside the file only) and returns its path; the agent's --kubeconfig takes it.
func (s *APIServer) WriteKubeconfig(t testing.TB, user, token string) string {
	t.Helper()
	path := filepath.Join(s.Dir, "kubeconfig-"+user)
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: %s
current-context: test
`, s.URL, base64Std(s.CACert), strconv.Quote(user), token, strconv.Quote(user))
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeAPIServerBinary is $KUBE_APISERVER when set, else what scripts/kube-apiserver.sh
// prints: the cached binary's path, built first when needed (minutes, once per version
// per machine).
func kubeAPIServerBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("KUBE_APISERVER"); bin != "" {
		return bin
	}
	script, err := findScript("scripts/kube-apiserver.sh")
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s%s", script, err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// findScript looks for rel in the working directory and its parents, then beside this
// source file's repository (for tests run from elsewhere).
func findScript(rel string) (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("%s not found above the working directory or the harness source", rel)
}

// startEtcd runs a single-member etcd on two free loopback ports (client, peer) with its
// data in Dir, and waits for /health.
func (s *APIServer) startEtcd(t testing.TB) {
	t.Helper()
	clientURL := "http://127.0.0.1:" + strconv.Itoa(freeLoopbackPort(t))
	peerURL := "http://127.0.0.1:" + strconv.Itoa(freeLoopbackPort(t))
	s.etcdURL = clientURL
	c := startChild(t, "etcd", filepath.Join(s.Dir, "etcd.log"),
		"--name=test",
		"--data-dir="+filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=test="+peerURL,
		"--logger=zap",
		"--log-level=warn",
	)
	s.mu.Lock()
	s.etcd = c
	s.mu.Unlock()
	waitHTTP(t, c, http.DefaultClient, clientURL+"/health", "", 30*time.Second)
}

// apiServerArgs are kube-apiserver's flags. The ones that are not obvious:
//   - --endpoint-reconciler-type=none: nothing writes the default/kubernetes endpoints
//     (there is no real address to advertise, and no other apiserver to lease with);
//   - --advertise-address=127.0.0.1: otherwise it picks the host's default-route address;
//   - --disable-admission-plugins=ServiceAccount: that plugin rejects Pods whose
//     ServiceAccount does not exist, and without a controller manager nothing creates a
//     namespace's "default" ServiceAccount, so every Pod would be rejected;
//   - --allow-privileged: the agent's DaemonSet Pods are privileged and use hostNetwork;
//   - --service-account-*: the issuer and key pair the TokenRequest API signs with and the
//     authenticator verifies with (ServiceAccountToken);
//   - --shutdown-send-retry-after: on SIGTERM, drain ordinary requests, then close the
//     HTTP server within 2 s; without it the server waits up to --request-timeout (60 s)
//     for open watches to end, so Stop would end in SIGKILL.
func (s *APIServer) apiServerArgs() []string {
	return []string{
		"--etcd-servers=" + s.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(s.port),
		"--tls-cert-file=" + filepath.Join(s.Dir, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(s.Dir, "serving.key"),
		"--token-auth-file=" + s.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(s.Dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(s.Dir, "sa.key"),
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--shutdown-send-retry-after=true",
		"--profiling=false",
	}
}

// startAPIServer runs kube-apiserver and waits for /readyz with the admin token.
func (s *APIServer) startAPIServer(t testing.TB) {
	t.Helper()
	c := startChild(t, s.bin, filepath.Join(s.Dir, "kube-apiserver.log"), s.apiServerArgs()...)
	s.mu.Lock()
	s.apiserver = c
	s.mu.Unlock()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACert)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	start := time.Now()
	waitHTTP(t, c, client, s.URL+"/readyz", s.AdminToken, apiServerReadyTimeout)
	t.Logf("kube-apiserver ready on %s in %v", s.URL, time.Since(start).Round(time.Millisecond))
}

// stopAll stops kube-apiserver, then etcd; it is the cleanup of StartAPIServer.
func (s *APIServer) stopAll() {
	s.Stop()
	s.mu.Lock()
	c := s.etcd
	s.etcd = nil
	s.mu.Unlock()
	if c != nil {
		c.stop(10 * time.Second)
	}
}

// writeTokenFile writes the static tokens in --token-auth-file's CSV format:
// token,user,uid,"group1,group2".
func (s *APIServer) writeTokenFile(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	var b strings.Builder
	for _, tok := range s.tokens {
		fmt.Fprintf(&b, "%s,%s,%s,%q\n", tok.token, tok.user, tok.user, strings.Join(tok.groups, ","))
	}
	s.mu.Unlock()
	if err := os.WriteFile(s.tokenFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeKeys makes a CA and a serving certificate signed by it (for 127.0.0.1, localhost
// and the in-cluster names), and the RSA key pair ServiceAccount tokens are signed with.
func (s *APIServer) writeKeys(t testing.TB) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sockmesh-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	servingKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	servingTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
	}
	servingDER, err := x509.CreateCertificate(rand.Reader, servingTemplate, ca, &servingKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	s.CACert = pemBlock("CERTIFICATE", caDER)
	writePEM(t, filepath.Join(s.Dir, "ca.crt"), "CERTIFICATE", caDER)
	writePEM(t, filepath.Join(s.Dir, "serving.crt"), "CERTIFICATE", servingDER)
	writePEM(t, filepath.Join(s.Dir, "serving.key"), "PRIVATE KEY", marshalPKCS8(t, servingKey))
	writePEM(t, filepath.Join(s.Dir, "sa.key"), "PRIVATE KEY", marshalPKCS8(t, saKey))
	writePEM(t, filepath.Join(s.Dir, "sa.pub"), "PUBLIC KEY", saPub)
}

func marshalPKCS8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pemBlock(kind, der), 0o600); err != nil {
		t.Fatal(err)
	}
}

// randomToken is 32 random hex characters.
func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// freeLoopbackPort is a TCP port on 127.0.0.1 that was free a moment ago.
func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers 200, failing the test (with the tail of c's log)
// when c exits or timeout passes.
func waitHTTP(t testing.TB, c *child, client *http.Client, url, token string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body := make([]byte, 4096)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body[:n])
		} else {
			last = err.Error()
		}
		select {
		case <-c.done:
			t.Fatalf("%s exited before %s was ready: %v\n%s", c.name, url, c.err, c.logTail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v (last: %s)\n%s", url, timeout, last, c.logTail())
		}
	}
}

// child is a process started in its own process group with its output in a log file.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // from Wait, set before done is closed
	once sync.Once
}

// startChild starts name with args, stdout and stderr to logPath. The child is in its
// own process group (stop signals the whole group) and gets SIGKILL if the test process
// dies without cleaning up (Pdeathsig, armed from a thread that never exits).
func startChild(t testing.TB, name, logPath string, args ...string) *child {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn(cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	c := &child{name: filepath.Base(name), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c
}

// stop sends SIGTERM to the child's process group, SIGKILL after grace, and waits.
func (c *child) stop(grace time.Duration) {
	c.once.Do(func() {
		pgid := c.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-c.done
		}
		// Anything left in the group (there should be nothing) goes too.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
}

// kill sends SIGKILL to the child's process group and waits.
func (c *child) kill() {
	c.once.Do(func() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
}

// logTail is the end of the child's log, for failure messages.
func (c *child) logTail() string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return err.Error()
	}
	const tail = 4000
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return string(b)
}

var (
	spawnOnce     sync.Once
	spawnRequests chan spawnRequest
)

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// spawn starts cmd from one OS thread that stays locked for the life of the test
// process. Pdeathsig fires when the thread that forked the child exits, not the process;
// Go may end other threads (a goroutine that exits while locked to its thread takes the
// thread with it), which would kill the child in the middle of a test.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnRequests = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread()
			for req := range spawnRequests {
				req.done <- req.cmd.Start()
			}
		}()
	})
	req := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	spawnRequests <- req
	return <-req.done
}

// base64Std is standard base64, as kubeconfig's *-data fields want.
func base64Std(b []byte) string {
	return base64.StdEncoding.EncodeToString(b)
}
