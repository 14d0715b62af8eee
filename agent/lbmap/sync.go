package lbmap

import "fmt"

// Observer learns about every map operation, for metrics.
type Observer interface {
	// MapOp reports n entries written ("update") or removed ("delete") in table, and the
	// error that stopped the batch, if any.
	MapOp(table, op string, n int, err error)
	// MapRepairs reports that Repair wrote or removed n > 0 entries of table to undo
	// changes made behind the writer's back.
	MapRepairs(table string, n int)
}

// synced mirrors one kernel table: cur is what the kernel holds as far as this writer
// knows (read from the map at start, then kept up to date by every successful write).
// This is the one reconcile pattern: desired state in, only the difference out.
type synced[K comparable, V comparable] struct {
	t   Table[K, V]
	cur map[K]V
	obs Observer
	// name and max are read once: on a kernel map each is a syscall.
	name string
	max  int
	// changed counts the entries written or removed, so Repair can tell what it fixed.
	changed int
	// byID, when idOf is set, indexes cur by the service id each entry belongs to, so a
	// pass over a few services finds their entries without reading every entry.
	idOf func(K, V) uint32
	byID map[uint32]map[K]struct{}
	// added and removed, when set, learn each key a write adds or a removal takes away
	// (the backend id pool follows its table this way).
	added, removed func(K)
}

func newSynced[K comparable, V comparable](t Table[K, V], obs Observer, idOf func(K, V) uint32) (*synced[K, V], error) {
	s := &synced[K, V]{t: t, obs: obs, name: t.Name(), max: t.MaxEntries(), idOf: idOf}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// set and unset keep cur and byID together.
func (s *synced[K, V]) set(k K, v V) {
	if s.idOf != nil {
		if old, ok := s.cur[k]; ok {
			s.unindex(k, old)
		}
		id := s.idOf(k, v)
		if s.byID[id] == nil {
			s.byID[id] = map[K]struct{}{}
		}
		s.byID[id][k] = struct{}{}
	}
	s.cur[k] = v
}

func (s *synced[K, V]) unset(k K) {
	if old, ok := s.cur[k]; ok && s.idOf != nil {
		s.unindex(k, old)
	}
	delete(s.cur, k)
}

func (s *synced[K, V]) unindex(k K, v V) {
	id := s.idOf(k, v)
	delete(s.byID[id], k)
	if len(s.byID[id]) == 0 {
		delete(s.byID, id)
	}
}

// reload replaces the mirror with what the kernel holds now.
func (s *synced[K, V]) reload() error {
	cur, err := s.t.Dump()
	if err != nil {
		return fmt.Errorf("read map %s: %w", s.name, err)
	}
	s.cur = map[K]V{}
	s.byID = map[uint32]map[K]struct{}{}
	for k, v := range cur {
		s.set(k, v)
	}
	return nil
}

// room is how many more keys the table takes.
func (s *synced[K, V]) room() int { return s.max - len(s.cur) }

// write stores the entries in one batch; the caller passes only the ones that differ.
func (s *synced[K, V]) write(keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	n, err := s.t.Update(keys, vals)
	for i := 0; i < n; i++ {
		if _, had := s.cur[keys[i]]; !had && s.added != nil {
			s.added(keys[i])
		}
		s.set(keys[i], vals[i])
	}
	s.changed += n
	s.obs.MapOp(s.name, "update", n, err)
	if err != nil {
		return fmt.Errorf("update map %s, key %+v: %w", s.name, keys[n], err)
	}
	return nil
}

// remove deletes the keys in one batch.
func (s *synced[K, V]) remove(keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	n, err := s.t.Delete(keys)
	for i := 0; i < n; i++ {
		if _, had := s.cur[keys[i]]; had && s.removed != nil {
			s.removed(keys[i])
		}
		s.unset(keys[i])
	}
	s.changed += n
	s.obs.MapOp(s.name, "delete", n, err)
	if err != nil {
		return fmt.Errorf("delete from map %s, key %+v: %w", s.name, keys[n], err)
	}
	return nil
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
	return s.write(keys, vals)
}

// prune deletes the entries that are not desired.
func (s *synced[K, V]) prune(desired map[K]V) error {
	var keys []K
	for k := range s.cur {
		if _, ok := desired[k]; !ok {
			keys = append(keys, k)
		}
	}
	return s.remove(keys)
}
