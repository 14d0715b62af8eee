package xds

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/sockmesh/sockmesh/agent/model"
)

// ReasonNameCollision is the ObjectError reason of a service port left out of xDS
// because another one has its resource names.
const ReasonNameCollision = "xds_name_collision"

// nameClaims tracks which service ports claim each set of xDS resource names. Every
// name a port's resources carry derives from its authority (host:port), and hosts
// join name and namespace with a dot, so c/a.b and b.c/a would overwrite each other's
// cluster, endpoints, listener and routes. The first port in name order is served;
// the others are shadowed: left out, and reported.
type nameClaims struct {
	byAuthority map[string][]servicePort    // in name order
	shadowed    map[servicePort]servicePort // a port left out → the port served instead
	generation  uint64                      // counts adds and removes
}

func (c *nameClaims) add(p servicePort) {
	if c.byAuthority == nil {
		c.byAuthority, c.shadowed = map[string][]servicePort{}, map[servicePort]servicePort{}
	}
	c.generation++
	a := p.authority()
	ports := c.byAuthority[a]
	i, _ := slices.BinarySearchFunc(ports, p, compareServicePorts)
	c.byAuthority[a] = slices.Insert(ports, i, p)
	c.reshadow(a)
}

func (c *nameClaims) remove(p servicePort) {
	c.generation++
	a := p.authority()
	c.byAuthority[a] = slices.DeleteFunc(c.byAuthority[a], func(q servicePort) bool { return q == p })
	delete(c.shadowed, p)
	c.reshadow(a)
}

func (c *nameClaims) reshadow(authority string) {
	ports := c.byAuthority[authority]
	if len(ports) == 0 {
		delete(c.byAuthority, authority)
		return
	}
	for _, p := range ports[1:] {
		c.shadowed[p] = ports[0]
	}
	delete(c.shadowed, ports[0])
}

// served says whether the port's resources are the ones under its names.
func (c *nameClaims) served(p servicePort) bool {
	_, shadowed := c.shadowed[p]
	return !shadowed
}

// errors reports each shadowed port, naming the one served instead, in a stable order.
func (c *nameClaims) errors() []model.ObjectError {
	var errs []model.ObjectError
	for p, winner := range c.shadowed {
		errs = append(errs, model.ObjectError{Kind: "Service", Namespace: p.name.Namespace, Name: p.name.Name,
			Reason: ReasonNameCollision, Message: fmt.Sprintf(
				"port %s has the xDS names of Service %s port %s (cluster %s): %s keeps them; "+
					"this port is left out of xDS and its L7 connections are refused",
				p.describe(), winner.name, winner.describe(), p.clusterName(), winner.name)})
	}
	slices.SortFunc(errs, func(a, b model.ObjectError) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Message, b.Message))
	})
	return errs
}

// describe is the port as a Service spec names it: "80" or "80 (http)".
func (p servicePort) describe() string {
	if p.portName == "" {
		return fmt.Sprint(p.port)
	}
	return fmt.Sprintf("%d (%s)", p.port, p.portName)
}

// compareServicePorts orders ports by namespace, name, port name, port and protocol.
func compareServicePorts(a, b servicePort) int {
	return cmp.Or(cmp.Compare(a.name.Namespace, b.name.Namespace), cmp.Compare(a.name.Name, b.name.Name),
		cmp.Compare(a.portName, b.portName), cmp.Compare(a.port, b.port), cmp.Compare(a.protocol, b.protocol))
}
