package lbmap

import "fmt"

// Observer learns about every map operation, for metrics.
type Observer interface {
	// MapOp reports n entries written ("update") or removed ("delete") in table, and the
	// error that stopped the batch, if any.
	MapOp(table, op string, n int, err error)
}

// synced mirrors one kernel table: cur is what the kernel holds as far as this writer
// knows (read from the map at start, then kept up to date by every successful write).
// This is the one reconcile pattern: desired state in, only the difference out.
type synced[K comparable, V comparable] struct {
	t   Table[K, V]
	cur map[K]V
	obs Observer
}

func newSynced[K comparable, V comparable](t Table[K, V], obs Observer) (*synced[K, V], error) {
	cur, err := t.Dump()
	if err != nil {
		return nil, fmt.Errorf("read map %s: %w", t.Name(), err)
	}
	return &synced[K, V]{t: t, cur: cur, obs: obs}, nil
}

// upsert writes the desired entries that are missing or differ.
func (s *synced[K, V]) upsert(desired map[K]V) error {
	var keys []K
	var vals []V
	for k, v := range desired {
		if old, ok := s.cur[k]; !ok || old != v {
			keys = append(keys, k)
			vals = append(vals, v)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	n, err := s.t.Update(keys, vals)
	for i := 0; i < n; i++ {
		s.cur[keys[i]] = vals[i]
	}
	s.obs.MapOp(s.t.Name(), "update", n, err)
	if err != nil {
		return fmt.Errorf("update map %s, key %+v: %w", s.t.Name(), keys[n], err)
	}
	return nil
}

// prune deletes the entries that are not desired.
func (s *synced[K, V]) prune(desired map[K]V) error {
	var keys []K
	for k := range s.cur {
		if _, ok := desired[k]; !ok {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	n, err := s.t.Delete(keys)
	for i := 0; i < n; i++ {
		delete(s.cur, keys[i])
	}
	s.obs.MapOp(s.t.Name(), "delete", n, err)
	if err != nil {
		return fmt.Errorf("delete from map %s, key %+v: %w", s.t.Name(), keys[n], err)
	}
	return nil
}
