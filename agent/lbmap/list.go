package lbmap

import (
	"net/netip"
	"sort"

	"github.com/sockmesh/sockmesh/agent/model"
)

// ListedBackend is one backend of a ListedService.
type ListedBackend struct {
	ID      uint32         `json:"id"`
	Address netip.AddrPort `json:"address"`
	Slots   int            `json:"slots"` // its weight: how many of the service's slots pick it
}

// ListedService is one frontend as the maps hold it.
type ListedService struct {
	ID              uint32          `json:"id"`
	Name            string          `json:"name"`
	Frontend        string          `json:"frontend"`
	AffinitySeconds uint32          `json:"affinitySeconds,omitempty"`
	Slots           uint32          `json:"slots"`
	Backends        []ListedBackend `json:"backends"`
}

// List reads the programmed services from the maps themselves (not from an agent), so it
// shows what the datapath does even while the agent is down.
func List(t Tables) ([]ListedService, error) {
	svcs, err := t.Services.Dump()
	if err != nil {
		return nil, err
	}
	slots, err := t.Slots.Dump()
	if err != nil {
		return nil, err
	}
	backends, err := t.Backends.Dump()
	if err != nil {
		return nil, err
	}
	names, err := t.Names.Dump()
	if err != nil {
		return nil, err
	}
	slotsPerBackend := map[uint32]int{}
	for _, bid := range slots {
		slotsPerBackend[bid]++
	}
	bySvc := map[uint32][]ListedBackend{}
	for id, b := range backends {
		bySvc[b.SvcId] = append(bySvc[b.SvcId], ListedBackend{ID: id, Address: refOf(b).addr, Slots: slotsPerBackend[id]})
	}
	type row struct {
		fe  model.Frontend
		svc ListedService
	}
	rows := make([]row, 0, len(svcs))
	for k, v := range svcs {
		bs := bySvc[v.Id]
		if bs == nil {
			bs = []ListedBackend{}
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].Address.Compare(bs[j].Address) < 0 })
		fe := frontendOf(k)
		rows = append(rows, row{fe, ListedService{ID: v.Id, Name: names[v.Id].String(), Frontend: fe.String(),
			AffinitySeconds: v.AffinityTimeout, Slots: v.Count, Backends: bs}})
	}
	sort.Slice(rows, func(i, j int) bool { return model.FrontendLess(rows[i].fe, rows[j].fe) })
	out := make([]ListedService, len(rows))
	for i, r := range rows {
		out[i] = r.svc
	}
	return out, nil
}
