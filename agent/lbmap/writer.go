package lbmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// Writer programs the LB maps from model snapshots. Apply, Repair and Programmed are
// serialised by a mutex, so they may be called from different goroutines.
type Writer struct {
	mu       sync.Mutex
	obs      Observer
	services *synced[bpf.SvcKey, bpf.SvcValue]
	slots    *synced[bpf.SlotKey, uint32]
	backends *synced[uint32, bpf.BackendValue]
	names    *synced[uint32, bpf.SvcName]
	local    *synced[bpf.LbAddr, uint8]

	// nodeName picks the endpoints that live on this node; nodeAddrs are always local.
	nodeName  string
	nodeAddrs []netip.Addr

	// pendingIDs are the ids of new services admitted by a pass that failed before it
	// published them: a retry finds the entries already written under that id.
	pendingIDs map[model.Frontend]uint32
	nextSvcID  uint32
	backendIDs *backendIDPool

	// applied says Apply ran, so the shadow holds an intended state Repair can put back.
	applied bool
	// exact says the maps hold exactly the last snapshot applied, no more (no refused
	// service waiting for room, no pass that failed half-way, nothing Repair rewrote):
	// only then may a pass look at a snapshot's Changed frontends alone.
	exact bool
	// localOf are the local endpoint addresses of each frontend, as last applied.
	localOf map[model.Frontend][]netip.Addr
	// ranges, when the NodePort datapath is loaded, and the source ranges of each
	// external frontend that has any, as last applied.
	ranges   *synced[bpf.NPRangeKey, uint8]
	rangesOf map[model.Frontend]sourceRanges
	// maglevSize and maglevSeed shape the Maglev tables (SetMaglev); size 0: none.
	maglevSize uint32
	maglevSeed uint64
	// unrestored is the state a Repair could not fully put back; the next Repair tries
	// again, the next Apply replaces it.
	unrestored *state
}

// NewWriter reads the maps' current contents (left by an earlier agent, or empty) and
// adopts their ids, so the first Apply rewrites nothing that did not change.
func NewWriter(t Tables, obs Observer) (*Writer, error) {
	w := &Writer{obs: obs, pendingIDs: map[model.Frontend]uint32{}, nextSvcID: 1}
	var err error
	if w.services, err = newSynced(t.Services, obs, func(_ bpf.SvcKey, v bpf.SvcValue) uint32 { return v.Id }); err != nil {
		return nil, err
	}
	if w.slots, err = newSynced(t.Slots, obs, func(k bpf.SlotKey, _ uint32) uint32 { return k.SvcId }); err != nil {
		return nil, err
	}
	if w.backends, err = newSynced(t.Backends, obs, func(_ uint32, v bpf.BackendValue) uint32 { return v.SvcId }); err != nil {
		return nil, err
	}
	w.backends.added = func(id uint32) { w.backendIDs.used(id) }
	w.backends.removed = func(id uint32) { w.backendIDs.release(id) }
	if w.names, err = newSynced(t.Names, obs, func(id uint32, _ bpf.SvcName) uint32 { return id }); err != nil {
		return nil, err
	}
	if w.local, err = newSynced(t.Local, obs, nil); err != nil {
		return nil, err
	}
	if t.Ranges != nil {
		if w.ranges, err = newSynced(t.Ranges, obs, nil); err != nil {
			return nil, err
		}
	}
	w.adoptIDs()
	return w, nil
}

// adoptIDs makes sure fresh ids never collide with an id anything in the maps uses.
func (w *Writer) adoptIDs() {
	w.backendIDs = newBackendIDPool(w.backends.max, w.backends.cur)
	for _, v := range w.services.cur {
		w.nextSvcID = max(w.nextSvcID, v.Id+1)
	}
	for id := range w.names.cur {
		w.nextSvcID = max(w.nextSvcID, id+1)
	}
	for k := range w.slots.cur {
		w.nextSvcID = max(w.nextSvcID, k.SvcId+1)
	}
	for _, b := range w.backends.cur {
		w.nextSvcID = max(w.nextSvcID, b.SvcId+1)
	}
}

// SetNode tells the writer this node's name (endpoints with that nodeName are local)
// and addresses that are local whatever the model says (the Envoy listener's).
func (w *Writer) SetNode(name string, addrs []netip.Addr) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nodeName, w.nodeAddrs = name, addrs
	w.exact = false
}

// Result says what one Apply achieved.
type Result struct {
	Services int // frontends programmed
	Backends int // backend entries programmed
	Errors   []model.ObjectError
}

// Apply brings the maps to the snapshot, in the capacity-safe phases described in
// plan.go. A service that does not fit is refused with a map_full error naming it; one
// already programmed keeps its last programmed entries and is never evicted by a new
// one. Capacity never makes Apply fail: only an unexpected write failure does, and then
// the maps hold complete services and the writer knows exactly what it wrote, so the
// caller simply retries.
//
// A snapshot that says which frontends Changed, applied over maps that hold exactly
// the snapshot before it, is a pass over those frontends' entries alone: the same
// phases, the same result, O(the change). Otherwise the pass reads everything.
func (w *Writer) Apply(snap *model.Snapshot) (Result, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.applied, w.unrestored = true, nil
	var res Result
	scoped := snap.Changed != nil && w.exact
	w.exact = false // until this pass completes with nothing refused
	err := w.apply(snap, scoped, &res)
	if err != nil {
		// Ids taken for entries the pass did not write are free again.
		w.backendIDs = newBackendIDPool(w.backends.max, w.backends.cur)
	}
	w.exact = err == nil && len(w.pendingIDs) == 0 && !hasMapFull(res.Errors)
	res.Services, res.Backends = len(w.services.cur), len(w.backends.cur)
	return res, err
}

func hasMapFull(errs []model.ObjectError) bool {
	for _, e := range errs {
		if e.Reason == "map_full" {
			return true
		}
	}
	return false
}

func (w *Writer) apply(snap *model.Snapshot, scoped bool, res *Result) error {
	var idx heldIndex
	var svcs []*model.Service
	var considered []bpf.SvcKey // the programmed frontends this pass may remove
	if scoped {
		ids := map[uint32]bool{}
		for fe := range snap.Changed {
			k := svcKeyOf(fe)
			if v, ok := w.services.cur[k]; ok {
				ids[v.Id] = true
				considered = append(considered, k)
			}
			if svc, ok := snap.Services[fe]; ok {
				svcs = append(svcs, svc)
			}
		}
		slices.SortFunc(svcs, func(a, b *model.Service) int { return model.CompareFrontends(a.Frontend, b.Frontend) })
		idx = w.heldFor(ids)
	} else {
		idx = w.index()
		svcs = snap.SortedServices()
		for k := range w.services.cur {
			considered = append(considered, k)
		}
	}
	programmed, fresh, ids := w.claimIDs(snap, svcs, idx)

	// (a) Whole services that are gone, and whatever no service here holds.
	keep := func(k bpf.SvcKey) bool { _, ok := snap.Services[frontendOf(k)]; return ok }
	if err := w.removeUnwanted(idx, considered, keep, ids); err != nil {
		return err
	}
	w.noteLocal(snap, scoped)
	local, localErr := w.localAddrs()
	if localErr != nil {
		res.Errors = append(res.Errors, *localErr)
	}
	if err := w.local.prune(local); err != nil {
		return err
	}
	if err := w.local.upsert(local); err != nil {
		return err
	}

	// (b) Programmed services whose update needs no new key.
	var inPlace []*change
	var cands []*candidate
	for _, c := range programmed {
		if !c.newID {
			if ch, _ := c.layout(c.id, w.backendIDs.peek); w.price(ch).none() {
				if ch.changes() {
					inPlace = append(inPlace, ch)
				}
				continue
			}
		}
		cands = append(cands, c)
	}
	if _, err := w.execute(inPlace); err != nil {
		return err
	}

	// (c) Growing services, then new ones, while they fit.
	refused, err := w.admitWhileRoom(append(cands, fresh...))
	if err != nil {
		return err
	}
	if err := w.refuse(refused, res); err != nil {
		return err
	}
	clear(w.pendingIDs) // every admitted service is published now
	w.noteRanges(snap, scoped)
	return w.syncRanges(res)
}

// claimIDs orders the snapshot's services for admission, programmed ones first (so a
// full map never evicts one), each in frontend order, and gives each the id it has in
// the maps, or the one a failed pass gave it; ids are the ids claimed.
func (w *Writer) claimIDs(snap *model.Snapshot, svcs []*model.Service, idx heldIndex) (programmed, fresh []*candidate, ids map[uint32]bool) {
	for fe := range w.pendingIDs {
		if _, ok := snap.Services[fe]; !ok || w.isProgrammed(fe) {
			delete(w.pendingIDs, fe)
		}
	}
	ids = map[uint32]bool{}
	for _, svc := range svcs {
		c := &candidate{svc: svc, newID: true}
		if v, ok := w.services.cur[svcKeyOf(svc.Frontend)]; ok {
			c.id, c.newID = v.Id, false
			programmed = append(programmed, c)
		} else {
			// Unless another service took that id meanwhile.
			if id, ok := w.pendingIDs[svc.Frontend]; ok && (idx[id] == nil || len(idx[id].keys) == 0) {
				c.id, c.newID = id, false
			}
			fe := svc.Frontend
			c.admitted = func(id uint32) { w.pendingIDs[fe] = id }
			fresh = append(fresh, c)
		}
		if !c.newID && ids[c.id] {
			c.id, c.newID = 0, true // two services with one id: the later one gets a new one
		}
		if !c.newID {
			ids[c.id] = true
			c.held = idx[c.id]
		}
		c.layout = func(id uint32, fresh func(int) []uint32) (*change, []uint32) {
			return w.changeFor(c.svc, id, c.held, fresh)
		}
	}
	return programmed, fresh, ids
}

// refuse reports the candidates that did not fit. A programmed one keeps what it has;
// what a failed pass wrote ahead of a new one goes.
func (w *Writer) refuse(refused []refusal, res *Result) error {
	var leftovers []*change
	for _, r := range refused {
		svc := r.c.svc
		e := model.ObjectError{Kind: "Service", Namespace: svc.Name.Namespace, Name: svc.Name.Name, Reason: "map_full"}
		if w.isProgrammed(svc.Frontend) {
			e.Message = fmt.Sprintf("%s: update not programmed, keeping the last programmed backends: %s", svc.DisplayName(), r.reason)
		} else {
			e.Message = fmt.Sprintf("%s: not programmed: %s", svc.DisplayName(), r.reason)
			if !r.c.newID && r.c.held != nil {
				leftovers = append(leftovers, deleteAll(r.c.id, r.c.held))
			}
			delete(w.pendingIDs, svc.Frontend)
		}
		res.Errors = append(res.Errors, e)
	}
	_, err := w.execute(leftovers)
	return err
}

func (w *Writer) isProgrammed(fe model.Frontend) bool {
	_, ok := w.services.cur[svcKeyOf(fe)]
	return ok
}

// Programmed returns, for each frontend in the services map, the Kubernetes Service the
// names map says holds it (the names map spells it "namespace/name[:port]"). A frontend
// whose name entry is missing or unreadable (cut at 127 bytes) is left out. It reads the
// writer's view of the maps: what NewWriter found, as kept up to date by Apply and
// Repair.
func (w *Writer) Programmed() map[model.Frontend]model.ServiceName {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[model.Frontend]model.ServiceName, len(w.services.cur))
	for k, v := range w.services.cur {
		name, _, _ := strings.Cut(w.names.cur[v.Id].String(), ":")
		if ns, n, ok := strings.Cut(name, "/"); ok {
			out[frontendOf(k)] = model.ServiceName{Namespace: ns, Name: n}
		}
	}
	return out
}
