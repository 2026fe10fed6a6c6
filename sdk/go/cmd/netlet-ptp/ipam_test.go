package main

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPoolHandsOutEachAddressOnce(t *testing.T) {
	p := newPool(netip.MustParsePrefix("10.9.0.0/29")) // .1-.6 usable
	seen := map[netip.Addr]bool{}
	for i := range 6 {
		a, err := p.take(string(rune('a'+i)), netip.Addr{})
		if err != nil || seen[a] || a == netip.MustParseAddr("10.9.0.0") || a == netip.MustParseAddr("10.9.0.7") {
			t.Fatalf("take %d: %v %v", i, a, err)
		}
		seen[a] = true
	}
	if _, err := p.take("z", netip.Addr{}); !errors.As(err, &errExhausted{}) {
		t.Fatalf("want exhausted, got %v", err)
	}
	p.release(netip.MustParseAddr("10.9.0.3"), "c")
	if a, err := p.take("z", netip.MustParseAddr("10.9.0.3")); err != nil || a.String() != "10.9.0.3" {
		t.Fatalf("static take of a freed address: %v %v", a, err)
	}
	if _, err := p.take("y", netip.MustParseAddr("10.9.0.3")); !errors.As(err, &errInUse{}) {
		t.Fatalf("want in use, got %v", err)
	}
	if _, err := p.take("y", netip.MustParseAddr("10.9.1.3")); !errors.As(err, &errOutOfRange{}) {
		t.Fatalf("want out of range, got %v", err)
	}
}
