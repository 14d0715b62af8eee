// Package tests holds sockmesh's end-to-end tests: the real agent binary, real BPF
// programs in the running kernel, real sockets in network namespaces made per test.
package tests

import (
	"os"
	"testing"

	"github.com/sockmesh/sockmesh/tests/harness"
)

func TestMain(m *testing.M) {
	harness.MaybeRunChild()
	code := m.Run()
	harness.RemoveBinary()
	os.Exit(code)
}
