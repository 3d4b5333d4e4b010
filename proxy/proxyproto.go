package proxy

import (
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyListener requires a PROXY protocol header (v1 or v2) from the load
// balancers in lbs and refuses connections from anywhere else: behind a
// load balancer, a direct connection would bypass it and its address would
// be taken for the client's.
func proxyListener(ln net.Listener, lbs []netip.Prefix) net.Listener {
	return &proxyproto.Listener{
		Listener: ln,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if inPrefixes(addrOf(o.Upstream), lbs) {
				return proxyproto.REQUIRE, nil
			}
			return proxyproto.REJECT, proxyproto.ErrInvalidUpstream
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
}

// proxyHeaderOK reads the PROXY header of a connection from a load
// balancer (in the connection's own goroutine: it blocks until the header
// arrives) and reports whether it was valid. Other connections pass.
func proxyHeaderOK(c net.Conn) bool {
	pc, ok := c.(*proxyproto.Conn)
	if !ok {
		return true
	}
	return pc.ProxyHeader() != nil
}
