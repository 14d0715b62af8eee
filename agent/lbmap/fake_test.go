package lbmap

import (
	"errors"
	"fmt"
)

// fakeTable is an in-memory Table with a capacity and injectable failures.
type fakeTable[K comparable, V comparable] struct {
	name    string
	max     int
	m       map[K]V
	writes  int
	deletes int
	// failUpdateAfter makes the next Update fail after this many entries (-1: never).
	failUpdateAfter int
}

func newFake[K comparable, V comparable](name string, max int) *fakeTable[K, V] {
	return &fakeTable[K, V]{name: name, max: max, m: map[K]V{}, failUpdateAfter: -1}
}

func (f *fakeTable[K, V]) Name() string    { return f.name }
func (f *fakeTable[K, V]) MaxEntries() int { return f.max }

func (f *fakeTable[K, V]) Dump() (map[K]V, error) {
	out := make(map[K]V, len(f.m))
	for k, v := range f.m {
		out[k] = v
	}
	return out, nil
}

func (f *fakeTable[K, V]) Update(keys []K, vals []V) (int, error) {
	for i := range keys {
		if f.failUpdateAfter == 0 {
			f.failUpdateAfter = -1
			return i, errors.New("injected failure")
		}
		if f.failUpdateAfter > 0 {
			f.failUpdateAfter--
		}
		if _, ok := f.m[keys[i]]; !ok && len(f.m) >= f.max {
			return i, fmt.Errorf("%s: map full", f.name)
		}
		f.m[keys[i]] = vals[i]
		f.writes++
	}
	return len(keys), nil
}

func (f *fakeTable[K, V]) Delete(keys []K) (int, error) {
	for _, k := range keys {
		delete(f.m, k)
		f.deletes++
	}
	return len(keys), nil
}
