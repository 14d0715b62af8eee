package harness

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
)

// MidwayT runs harness code under a testing.TB that fails the way a real test fails
// midway (Fatal stops the function, then the registered cleanups run, last first),
// without failing the test that observes it. It lets a test prove that the harness
// leaves nothing behind when a test dies in the middle.
type MidwayT struct {
	testing.TB // the observing test: TempDir, Logf and the like pass through
	mu         sync.Mutex
	cleanups   []func()
	failed     bool
	msgs       []string
}

// RunMidway runs fn under a MidwayT and then its cleanups.
func RunMidway(t testing.TB, fn func(m *MidwayT)) *MidwayT {
	m := &MidwayT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer m.runCleanups()
		fn(m)
	}()
	<-done
	return m
}

func (m *MidwayT) runCleanups() {
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		m.cleanups[i]()
	}
}

func (m *MidwayT) Cleanup(f func()) { m.mu.Lock(); m.cleanups = append(m.cleanups, f); m.mu.Unlock() }
func (m *MidwayT) Helper()          {}
func (m *MidwayT) Failed() bool     { m.mu.Lock(); defer m.mu.Unlock(); return m.failed }
func (m *MidwayT) Error(args ...any) {
	m.record(fmt.Sprint(args...))
}
func (m *MidwayT) Errorf(format string, args ...any) { m.record(fmt.Sprintf(format, args...)) }
func (m *MidwayT) Fatal(args ...any)                 { m.record(fmt.Sprint(args...)); runtime.Goexit() }
func (m *MidwayT) Fatalf(format string, args ...any) {
	m.record(fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (m *MidwayT) FailNow() { m.record("FailNow"); runtime.Goexit() }
func (m *MidwayT) Fail()    { m.record("Fail") }

// Messages returns what the function reported as failures.
func (m *MidwayT) Messages() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.msgs...)
}

func (m *MidwayT) record(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failed = true
	m.msgs = append(m.msgs, s)
}
