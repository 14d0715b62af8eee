package lbmap

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/sockmesh/sockmesh/agent/model"
	"github.com/sockmesh/sockmesh/bpf"
)

// maxSlotsPerService bounds how far weights expand one service's slot list.
const maxSlotsPerService = 4096

// backendRef names a backend entry: ids are per (service, address) so that an entry
// exists exactly while that backend is selected for that service.
type backendRef struct {
	svcID uint32
	addr  netip.AddrPort
	proto model.Protocol
}

// Writer programs the LB maps from model snapshots. It is safe for one goroutine at a
// time; Apply calls are serialised by a mutex anyway.
type Writer struct {
	mu       sync.Mutex
	services *synced[bpf.SvcKey, bpf.SvcValue]
	slots    *synced[bpf.SlotKey, uint32]
	backends *synced[uint32, bpf.BackendValue]
	names    *synced[uint32, bpf.SvcName]
	local    *synced[bpf.LbAddr, uint8]

	// nodeName picks the endpoints that live on this node; nodeAddrs are always local.
	nodeName  string
	nodeAddrs []netip.Addr

	svcIDs        map[model.Frontend]uint32
	backendIDs    map[backendRef]uint32
	nextSvcID     uint32
	nextBackendID uint32
}

// NewWriter reads the maps' current contents (left by an earlier agent, or empty) and
// adopts their ids, so the first Apply rewrites nothing that did not change.
func NewWriter(t Tables, obs Observer) (*Writer, error) {
	w := &Writer{svcIDs: map[model.Frontend]uint32{}, backendIDs: map[backendRef]uint32{}, nextSvcID: 1, nextBackendID: 1}
	var err error
	if w.services, err = newSynced(t.Services, obs); err != nil {
		return nil, err
	}
	if w.slots, err = newSynced(t.Slots, obs); err != nil {
		return nil, err
	}
	if w.backends, err = newSynced(t.Backends, obs); err != nil {
		return nil, err
	}
	if w.names, err = newSynced(t.Names, obs); err != nil {
		return nil, err
	}
	if w.local, err = newSynced(t.Local, obs); err != nil {
		return nil, err
	}
	for k, v := range w.services.cur {
		w.svcIDs[frontendOf(k)] = v.Id
		w.nextSvcID = max(w.nextSvcID, v.Id+1)
	}
	for id, b := range w.backends.cur {
		w.backendIDs[refOf(b)] = id
		w.nextBackendID = max(w.nextBackendID, id+1)
	}
	return w, nil
}

// SetNode tells the writer this node's name (endpoints with that nodeName are local)
// and addresses that are local whatever the model says (the Envoy listener's).
func (w *Writer) SetNode(name string, addrs []netip.Addr) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nodeName, w.nodeAddrs = name, addrs
}

// desired is the full content the maps should have.
type desired struct {
	services map[bpf.SvcKey]bpf.SvcValue
	slots    map[bpf.SlotKey]uint32
	backends map[uint32]bpf.BackendValue
	names    map[uint32]bpf.SvcName
	local    map[bpf.LbAddr]uint8
}

// Result says what one Apply achieved.
type Result struct {
	Services int // frontends programmed
	Backends int // backend entries programmed
	Errors   []model.ObjectError
}

// Apply brings the maps to the snapshot. Entries are written make-before-break
// (backends, then slots, then services; removals after), so a connect() racing with an
// update always finds a complete service, old or new. A service that does not fit is
// rejected with an error naming it; one already programmed keeps its last programmed
// state. A failed write stops this pass with the maps consistent; the caller retries.
func (w *Writer) Apply(snap *model.Snapshot) (Result, error) {
	w.mu.Lock()
	defer w.mu.Unlock()

	d, errs := w.plan(snap)
	res := Result{Services: len(d.services), Backends: len(d.backends), Errors: errs}
	steps := []func() error{
		// Whole services that are gone go first, which also frees room for new ones.
		func() error { return w.services.prune(d.services) },
		func() error { return w.backends.upsert(d.backends) },
		func() error { return w.slots.upsert(d.slots) },
		func() error { return w.names.upsert(d.names) },
		func() error { return w.local.upsert(d.local) },
		func() error { return w.services.upsert(d.services) },
		func() error { return w.slots.prune(d.slots) },
		func() error { return w.backends.prune(d.backends) },
		func() error { return w.names.prune(d.names) },
		func() error { return w.local.prune(d.local) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return res, err
		}
	}
	w.forgetUnused(d)
	return res, nil
}

// plan computes the desired maps, allocating ids and admitting services while they fit.
// Services already in the maps are admitted first, so a full map never evicts one.
func (w *Writer) plan(snap *model.Snapshot) (desired, []model.ObjectError) {
	d := desired{
		services: map[bpf.SvcKey]bpf.SvcValue{},
		slots:    map[bpf.SlotKey]uint32{},
		backends: map[uint32]bpf.BackendValue{},
		names:    map[uint32]bpf.SvcName{},
		local:    w.localAddrs(snap),
	}
	var errs []model.ObjectError
	var programmed, fresh []*model.Service
	for _, svc := range snap.SortedServices() {
		if _, ok := w.services.cur[svcKeyOf(svc.Frontend)]; ok {
			programmed = append(programmed, svc)
		} else {
			fresh = append(fresh, svc)
		}
	}
	maxSvc := w.services.t.MaxEntries()
	maxBackends := min(w.backends.t.MaxEntries(), w.slots.t.MaxEntries())
	for _, svc := range append(programmed, fresh...) {
		key := svcKeyOf(svc.Frontend)
		_, wasProgrammed := w.services.cur[key]
		entries := w.entriesFor(svc)
		slotsNeeded := len(d.slots) + len(entries.slots)
		backendsNeeded := len(d.backends) + len(entries.backends)
		if len(d.services)+1 <= maxSvc && slotsNeeded <= maxBackends && backendsNeeded <= maxBackends {
			entries.into(d)
			continue
		}
		what := fmt.Sprintf("sm_services holds at most %d services (--max-services)", maxSvc)
		if len(d.services)+1 <= maxSvc {
			what = fmt.Sprintf("sm_backends/sm_slots hold at most %d entries (--max-backends)", maxBackends)
		}
		e := model.ObjectError{Kind: "Service", Namespace: svc.Name.Namespace, Name: svc.Name.Name, Reason: "map_full"}
		if wasProgrammed {
			w.currentEntries(key).into(d)
			e.Message = fmt.Sprintf("%s: update not programmed, keeping the last programmed backends: %s", svc.DisplayName(), what)
		} else {
			e.Message = fmt.Sprintf("%s: not programmed: %s", svc.DisplayName(), what)
		}
		errs = append(errs, e)
	}
	return d, errs
}

// serviceEntries are the map entries of one service.
type serviceEntries struct {
	key      bpf.SvcKey
	value    bpf.SvcValue
	name     bpf.SvcName
	slots    map[bpf.SlotKey]uint32
	backends map[uint32]bpf.BackendValue
}

func (e serviceEntries) into(d desired) {
	d.services[e.key] = e.value
	d.names[e.value.Id] = e.name
	for k, v := range e.slots {
		d.slots[k] = v
	}
	for k, v := range e.backends {
		d.backends[k] = v
	}
}

func (w *Writer) entriesFor(svc *model.Service) serviceEntries {
	id, ok := w.svcIDs[svc.Frontend]
	if !ok {
		id = w.nextSvcID
		w.nextSvcID++
		w.svcIDs[svc.Frontend] = id
	}
	e := serviceEntries{
		key:      svcKeyOf(svc.Frontend),
		name:     bpf.NameFrom(svc.Name.String() + portSuffix(svc.PortName)),
		slots:    map[bpf.SlotKey]uint32{},
		backends: map[uint32]bpf.BackendValue{},
	}
	selected := svc.Selected()
	var ids []uint32
	var weights []int
	for _, b := range selected {
		ref := backendRef{svcID: id, addr: b.AddrPort(), proto: svc.Frontend.Protocol}
		bid, ok := w.backendIDs[ref]
		if !ok {
			bid = w.nextBackendID
			w.nextBackendID++
			w.backendIDs[ref] = bid
		}
		addr, fam := bpf.AddrFrom(b.Addr)
		e.backends[bid] = bpf.BackendValue{Addr: addr, Port: bpf.PortToNet(b.Port), Proto: uint8(svc.Frontend.Protocol), Family: fam, SvcId: id}
		ids = append(ids, bid)
		weights = append(weights, int(max(b.Weight, 1)))
	}
	slot := uint32(1)
	for i, n := range slotCounts(weights, maxSlotsPerService) {
		for j := 0; j < n; j++ {
			e.slots[bpf.SlotKey{SvcId: id, Slot: slot}] = ids[i]
			slot++
		}
	}
	e.value = bpf.SvcValue{Id: id, Count: slot - 1, AffinityTimeout: uint32(svc.AffinityTimeout.Seconds())}
	if svc.L7 {
		e.value.Flags |= bpf.SvcFlagL7
	}
	return e
}

// localAddrs are the addresses of endpoints on this node plus the node's own.
func (w *Writer) localAddrs(snap *model.Snapshot) map[bpf.LbAddr]uint8 {
	out := map[bpf.LbAddr]uint8{}
	for _, a := range w.nodeAddrs {
		k, _ := bpf.AddrFrom(a)
		out[k] = 1
	}
	if w.nodeName == "" {
		return out
	}
	for _, svc := range snap.Services {
		for _, b := range svc.Backends {
			if b.NodeName == w.nodeName {
				k, _ := bpf.AddrFrom(b.Addr)
				out[k] = 1
			}
		}
	}
	return out
}

// currentEntries collects what the maps hold now for one service.
func (w *Writer) currentEntries(key bpf.SvcKey) serviceEntries {
	v := w.services.cur[key]
	e := serviceEntries{key: key, value: v, name: w.names.cur[v.Id], slots: map[bpf.SlotKey]uint32{}, backends: map[uint32]bpf.BackendValue{}}
	for k, bid := range w.slots.cur {
		if k.SvcId == v.Id {
			e.slots[k] = bid
			if b, ok := w.backends.cur[bid]; ok {
				e.backends[bid] = b
			}
		}
	}
	return e
}

// forgetUnused drops the ids of services and backends that are no longer in the maps,
// so the id tables do not grow with churn.
func (w *Writer) forgetUnused(d desired) {
	for fe := range w.svcIDs {
		if _, ok := d.services[svcKeyOf(fe)]; !ok {
			delete(w.svcIDs, fe)
		}
	}
	for ref, id := range w.backendIDs {
		if _, ok := d.backends[id]; !ok {
			delete(w.backendIDs, ref)
		}
	}
}

// slotCounts gives each backend a number of slots proportional to its weight, reduced by
// the weights' gcd (equal weights: one slot each) and scaled down to at most limit slots,
// never below one.
func slotCounts(weights []int, limit int) []int {
	g := 0
	total := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	out := make([]int, len(weights))
	for i, w := range weights {
		out[i] = w / max(g, 1)
		total += out[i]
	}
	if total > limit {
		for i := range out {
			out[i] = max(1, out[i]*limit/total)
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func portSuffix(name string) string {
	if name == "" {
		return ""
	}
	return ":" + name
}

func svcKeyOf(f model.Frontend) bpf.SvcKey {
	addr, fam := bpf.AddrFrom(f.Addr)
	return bpf.SvcKey{Vip: addr, Port: bpf.PortToNet(f.Port), Proto: uint8(f.Protocol), Family: fam}
}

func frontendOf(k bpf.SvcKey) model.Frontend {
	return model.Frontend{Addr: k.Vip.ToAddr(k.Family), Port: bpf.PortFromNet(k.Port), Protocol: model.Protocol(k.Proto)}
}

func refOf(b bpf.BackendValue) backendRef {
	return backendRef{svcID: b.SvcId, addr: netip.AddrPortFrom(b.Addr.ToAddr(b.Family), bpf.PortFromNet(b.Port)), proto: model.Protocol(b.Proto)}
}
