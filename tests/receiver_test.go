package tests

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sockmesh/sockmesh/bpf"
	"github.com/sockmesh/sockmesh/sockops"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// The receiver matrix: every behaviour a program may rely on when it reads a socket,
// run on a socket spliced by the datapath's own sk_msg program and on a TCP receiver
// in the sockhash, each compared with the same program on plain TCP (sockops.CheckKernel
// runs both side by side). One test per row. A row passes when plain TCP gave what TCP
// must give (so the row measures what it claims) and the agent's decision follows from
// the comparison: a receiver that differs anywhere keeps splicing off.

var (
	receiverOnce   sync.Once
	receiverReport sockops.Report
)

// tcpAnswers is what each row's program must see on plain TCP.
var tcpAnswers = map[string]string{
	"read":                      "1000 bytes, intact true",
	"readv":                     "1000 bytes, intact true",
	"MSG_PEEK":                  "peek 1000 (<nil>), then read 1000 (<nil>), same bytes true",
	"MSG_WAITALL":               "returned 1000 of 1000",
	"FIONREAD/SIOCINQ":          "1000 with 1000 queued",
	"SO_RCVLOWAT":               "readable at 10 of 1000: false; at 1000: true",
	"blocking read":             "returned 10",
	"non-blocking read":         "empty: EAGAIN; after 10 bytes: 10 <nil>",
	"poll":                      "readable empty false, with data true",
	"epoll level-triggered":     "events 1, unread again 1, drained 0",
	"epoll edge-triggered":      "events 1, no new data 0, new data 1, read 200 <nil>",
	"splice(2)":                 "moved 1000",
	"half-close":                "1000 bytes, intact true; then read 0 <nil>; reply 10 <nil>",
	"peer reset":                "reads: [1000 ECONNRESET]",
	"close with unread data":    "sender reads ECONNRESET",
	"reader and writer threads": "reader 65536 bytes, intact true; writer's peer got 2097152",
	"memory bound":              "sender blocked before 64 MiB",
}

func receiverMatrix(t *testing.T) sockops.Report {
	t.Helper()
	harness.RequirePrivileged(t)
	receiverOnce.Do(func() { receiverReport = sockops.CheckKernel() })
	if receiverReport.Err != nil {
		t.Fatalf("the kernel check could not run: %v", receiverReport.Err)
	}
	return receiverReport
}

func checkReceiverRow(t *testing.T, behaviour string) {
	rep := receiverMatrix(t)
	want, ok := tcpAnswers[behaviour]
	if !ok {
		t.Fatalf("no TCP answer written down for %q", behaviour)
	}
	for _, receiver := range []string{sockops.ReceiverSpliced, sockops.ReceiverInSockhash} {
		f, ok := rep.Find(receiver, behaviour)
		if !ok {
			t.Fatalf("the kernel check has no %q row for the %s receiver", behaviour, receiver)
		}
		if f.TCP != want {
			t.Errorf("%s on plain TCP: %q, want %q: the row does not measure TCP's behaviour", behaviour, f.TCP, want)
		}
		verdict := "like TCP: may be spliced"
		if !f.LikeTCP() {
			verdict = "NOT like TCP: keeps splicing off"
			if rep.Safe() {
				t.Errorf("%s receiver differs in %s (%q vs TCP %q), yet the report says safe", receiver, behaviour, f.Got, f.TCP)
			}
		}
		t.Logf("%-16s %q (TCP %q): %s", receiver, f.Got, f.TCP, verdict)
	}
}

func TestReceiverRead(t *testing.T)                { checkReceiverRow(t, "read") }
func TestReceiverReadv(t *testing.T)               { checkReceiverRow(t, "readv") }
func TestReceiverMsgPeek(t *testing.T)             { checkReceiverRow(t, "MSG_PEEK") }
func TestReceiverMsgWaitall(t *testing.T)          { checkReceiverRow(t, "MSG_WAITALL") }
func TestReceiverFIONREAD(t *testing.T)            { checkReceiverRow(t, "FIONREAD/SIOCINQ") }
func TestReceiverSoRcvlowat(t *testing.T)          { checkReceiverRow(t, "SO_RCVLOWAT") }
func TestReceiverBlockingRead(t *testing.T)        { checkReceiverRow(t, "blocking read") }
func TestReceiverNonBlockingRead(t *testing.T)     { checkReceiverRow(t, "non-blocking read") }
func TestReceiverPoll(t *testing.T)                { checkReceiverRow(t, "poll") }
func TestReceiverEpollLevelTriggered(t *testing.T) { checkReceiverRow(t, "epoll level-triggered") }
func TestReceiverEpollEdgeTriggered(t *testing.T)  { checkReceiverRow(t, "epoll edge-triggered") }
func TestReceiverSplice2(t *testing.T)             { checkReceiverRow(t, "splice(2)") }
func TestReceiverHalfClose(t *testing.T)           { checkReceiverRow(t, "half-close") }
func TestReceiverPeerReset(t *testing.T)           { checkReceiverRow(t, "peer reset") }
func TestReceiverCloseWithUnreadData(t *testing.T) { checkReceiverRow(t, "close with unread data") }
func TestReceiverReaderAndWriterThreads(t *testing.T) {
	checkReceiverRow(t, "reader and writer threads")
}
func TestReceiverMemoryBound(t *testing.T) { checkReceiverRow(t, "memory bound") }

// TestReceiverMatrixCoversEveryBehaviour keeps the tests above and the check in step.
func TestReceiverMatrixCoversEveryBehaviour(t *testing.T) {
	rows := sockops.Behaviours()
	if len(rows) != len(tcpAnswers) {
		t.Fatalf("the check has %d behaviours, the tests %d", len(rows), len(tcpAnswers))
	}
	for _, b := range rows {
		if _, ok := tcpAnswers[b]; !ok {
			t.Errorf("behaviour %q has no test", b)
		}
	}
}

// TestSpliceStaysOffWhereTheKernelCheckFails: the agent asked to splice runs the check,
// exports it, and programs splicing only if every receiver behaved like TCP.
//
// The agent's check and this process's are two runs on a loaded machine, and a row may
// come out differently between them (a blocking read that a race wakes late): so the
// agent is held to its own findings row by row (metrics, /debug/state, the log and what
// it programmed all agree), and to this process's check on the verdict, safe or not.
func TestSpliceStaysOffWhereTheKernelCheckFails(t *testing.T) {
	rep := receiverMatrix(t)
	for _, mode := range []string{"auto", "on", "off"} {
		t.Run(mode, func(t *testing.T) {
			env := harness.NewEnv(t, "server")
			a := env.StartAgent(t, env.WriteFile(t, "svc.yaml", spliceYAML(env.Host("server"), env.Host("client"))),
				"--splice", mode, "--node-name", spliceNodeName)
			c := env.DatapathConfig(t)
			st := a.DebugState(t)
			if mode == "off" {
				if c.Splice != bpf.SpliceOff || st.Splice.Splicing || a.Metric(t, "sockmesh_splice_enabled", nil) != 0 {
					t.Fatalf("--splice off programmed splice mode %d, /debug/state %+v", c.Splice, st.Splice)
				}
				if a.Metrics(t)["sockmesh_splice_kernel_check"] != nil {
					t.Fatal("--splice off ran the kernel check; it should not cost anything")
				}
				return
			}
			if st.Splice.Mode != mode || st.Splice.CheckError != "" {
				t.Fatalf("/debug/state splice = %+v, want mode %s and a check that ran", st.Splice, mode)
			}
			agentSafe := len(st.Splice.Differences) == 0
			if (c.Splice != bpf.SpliceOff) != agentSafe || st.Splice.Splicing != agentSafe {
				t.Fatalf("--splice %s programmed splice mode %d (/debug/state splicing %v), but the agent's own check found %d differences: %q",
					mode, c.Splice, st.Splice.Splicing, len(st.Splice.Differences), st.Splice.Differences)
			}
			if enabled := a.Metric(t, "sockmesh_splice_enabled", nil); (enabled == 1) != agentSafe {
				t.Fatalf("sockmesh_splice_enabled = %v with --splice %s; the agent's check safe = %v", enabled, mode, agentSafe)
			}
			if agentSafe != rep.Safe() {
				t.Errorf("the agent's check says safe = %v (%q), this process's says %v (%s)", agentSafe, st.Splice.Differences, rep.Safe(), rep.Summary())
			}
			var log string
			if !agentSafe {
				log = a.WaitLog(t, "splicing is off")
			}
			for _, f := range rep.Findings { // every row, named as the agent names it
				row := fmt.Sprintf("%s receiver, %s: ", f.Receiver, f.Behaviour)
				differs := false
				for _, d := range st.Splice.Differences {
					differs = differs || strings.HasPrefix(d, row)
				}
				got := a.Metric(t, "sockmesh_splice_kernel_check", map[string]string{"receiver": f.Receiver, "behaviour": f.Behaviour})
				if (got == 1) == differs {
					t.Errorf("sockmesh_splice_kernel_check{%s,%s} = %v, but /debug/state lists it among the differences = %v", f.Receiver, f.Behaviour, got, differs)
				}
				if differs && !strings.Contains(log, f.Behaviour) {
					t.Errorf("the log does not name %s among the differences:\n%s", f.Behaviour, log)
				}
				if differs != !f.LikeTCP() {
					t.Logf("%s receiver, %s: the agent's check and this process's disagree (this one: %q where TCP gives %q)", f.Receiver, f.Behaviour, f.Got, f.TCP)
				}
			}
		})
	}
}
