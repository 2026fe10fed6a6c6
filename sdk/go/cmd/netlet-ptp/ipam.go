package main

import (
	"fmt"
	"net/netip"
)

// pool hands out the addresses of one IPv4 subnet, round robin, never the network address
// or the gateway. Each address is held by one owner.
type pool struct {
	subnet netip.Prefix
	held   map[netip.Addr]string
	next   netip.Addr
}

func newPool(subnet netip.Prefix) *pool {
	subnet = subnet.Masked()
	return &pool{subnet: subnet, held: map[netip.Addr]string{}, next: subnet.Addr().Next()}
}

type errOutOfRange struct{ addr netip.Addr }

func (e errOutOfRange) Error() string { return fmt.Sprintf("%s is outside the pool", e.addr) }

type errInUse struct {
	addr  netip.Addr
	owner string
}

func (e errInUse) Error() string { return fmt.Sprintf("%s is held by %s", e.addr, e.owner) }

type errExhausted struct{ subnet netip.Prefix }

func (e errExhausted) Error() string { return fmt.Sprintf("no free address in %s", e.subnet) }

// take gives owner the address want (if valid), else the next free one.
func (p *pool) take(owner string, want netip.Addr) (netip.Addr, error) {
	if want.IsValid() {
		if !p.subnet.Contains(want) || want == p.subnet.Addr() || isBroadcast(p.subnet, want) {
			return netip.Addr{}, errOutOfRange{want}
		}
		if o, ok := p.held[want]; ok && o != owner {
			return netip.Addr{}, errInUse{want, o}
		}
		p.held[want] = owner
		return want, nil
	}
	a := p.next
	for range 1 << (32 - p.subnet.Bits()) {
		if !p.subnet.Contains(a) || isBroadcast(p.subnet, a) {
			a = p.subnet.Addr().Next()
		}
		if _, taken := p.held[a]; !taken {
			p.held[a] = owner
			p.next = a.Next()
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, errExhausted{p.subnet}
}

func (p *pool) release(a netip.Addr, owner string) {
	if p.held[a] == owner {
		delete(p.held, a)
	}
}

func isBroadcast(subnet netip.Prefix, a netip.Addr) bool {
	return subnet.Bits() < 31 && !subnet.Contains(a.Next())
}
