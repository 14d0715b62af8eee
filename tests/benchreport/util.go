package main

import (
	"io"
	"os"
	"sort"
)

// ioTee shows the benchmark output live while keeping a copy.
func ioTee(w io.Writer) io.Writer { return io.MultiWriter(os.Stdout, w) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
