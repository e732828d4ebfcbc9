package fanout

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// The egress guard checks the address a delivery actually dials, after
// DNS resolution (in the dialer's Control hook), so a receiver's name
// cannot be re-pointed at an internal address between a check and the
// connection (DNS rebinding). Link-local and cloud metadata addresses are
// always refused; with BlockPrivate, loopback and private ranges are too,
// except the networks in Allow.

// alwaysBlocked are never dialled, whatever the configuration: they hold
// cloud metadata services that hand out credentials or configure the
// host (169.254.169.254 and AWS's fd00:ec2::/64, Google's fd20:ce::254,
// Alibaba's 100.100.100.200, which is inside 100.64.0.0/10 and so was
// reachable by default and whenever allow_networks listed that range for
// a CGNAT or Tailscale receiver, and Azure's WireServer 168.63.129.16).
var alwaysBlocked = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::/64"), // AWS's: metadata (::254), EKS Pod Identity's credentials (::23), DNS
	netip.MustParsePrefix("fd20:ce::254/128"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("168.63.129.16/32"),
}

// privateNetworks are refused with BlockPrivate.
var privateNetworks = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), // "this network": 0.0.0.0 reaches the local host
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking, often used inside networks
	netip.MustParsePrefix("224.0.0.0/4"),     // multicast
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and 255.255.255.255
	netip.MustParsePrefix("::/96"),           // ::, ::1 and the IPv4-compatible form
	netip.MustParsePrefix("::ffff:0:0:0/96"), // SIIT's IPv4-translated form
	netip.MustParsePrefix("100::/64"),        // discard
	netip.MustParsePrefix("fec0::/10"),       // site-local, deprecated and still routed in places
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("ff00::/8"),
	nat64Local,
}

// EgressGuard decides which addresses deliveries may reach.
type EgressGuard struct {
	// BlockPrivate refuses loopback and private ranges
	// (delivery.block_private_networks).
	BlockPrivate bool
	// Allow lists networks allowed even when BlockPrivate
	// (delivery.allow_networks); never the always-blocked ones.
	Allow []netip.Prefix
}

// Translation prefixes that carry an IPv4 address inside an IPv6 one: a
// NAT64 gateway or 6to4 relay delivers to that IPv4 address, so it is the
// one checked.
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052 well-known prefix: the IPv4 address in the last 32 bits
	sixToFour  = netip.MustParsePrefix("2002::/16")       // RFC 3056: the IPv4 address in bits 16–47
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")  // RFC 8215 local-use: layout chosen by the operator, so a private network
	siit       = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765's IPv4-translated form: the IPv4 address in the last 32 bits
	compat     = netip.MustParsePrefix("::/96")           // the deprecated IPv4-compatible form, likewise
)

// effective returns the address a connection to addr reaches, for the
// checks: without an IPv6 zone (Prefix.Contains never matches a zoned
// address, and Linux ignores the zone of a non-link-local one), and the
// IPv4 address inside an IPv4-mapped, NAT64 or 6to4 address.
func effective(addr netip.Addr) netip.Addr {
	addr = addr.WithZone("").Unmap()
	if addr.Is6() {
		b := addr.As16()
		switch {
		case nat64.Contains(addr):
			return netip.AddrFrom4([4]byte(b[12:16]))
		case sixToFour.Contains(addr):
			return netip.AddrFrom4([4]byte(b[2:6]))
		case siit.Contains(addr), compat.Contains(addr) && addr != netip.IPv6Unspecified() && addr != netip.IPv6Loopback():
			// ::ffff:0:a9fe:a9fe and ::a9fe:a9fe are 169.254.169.254
			// where a translator or an old stack takes them so.
			return netip.AddrFrom4([4]byte(b[12:16]))
		}
	}
	return addr
}

// localNAT64Candidates returns the IPv4 addresses an address in the
// local-use NAT64 prefix may stand for: the operator chooses the prefix's
// length, and RFC 6052 places the IPv4 address differently for each (/32
// to /96; bits 64–71 are always skipped). The prefix is private, so
// refused with BlockPrivate, but a metadata address is never allowed,
// and a gateway on a /96 layout took 64:ff9b:1::a9fe:a9fe to
// 169.254.169.254 with the guard's defaults (found by a review).
func localNAT64Candidates(addr netip.Addr) []netip.Addr {
	if !nat64Local.Contains(addr) {
		return nil
	}
	b := addr.As16()
	return []netip.Addr{
		netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}),    // /32
		netip.AddrFrom4([4]byte{b[5], b[6], b[7], b[9]}),    // /40
		netip.AddrFrom4([4]byte{b[6], b[7], b[9], b[10]}),   // /48
		netip.AddrFrom4([4]byte{b[7], b[9], b[10], b[11]}),  // /56
		netip.AddrFrom4([4]byte{b[9], b[10], b[11], b[12]}), // /64
		netip.AddrFrom4([4]byte(b[12:16])),                  // /96
	}
}

// Check returns why addr may not be dialled, or "".
func (g *EgressGuard) Check(addr netip.Addr) string {
	addr = effective(addr)
	for _, p := range alwaysBlocked {
		if p.Contains(addr) {
			return fmt.Sprintf("link-local or cloud metadata address (%s) is never allowed", p)
		}
		for _, v4 := range localNAT64Candidates(addr) {
			if p.Contains(v4) {
				return fmt.Sprintf("link-local or cloud metadata address (%s, inside the local-use NAT64 prefix %s) is never allowed", p, nat64Local)
			}
		}
	}
	if g == nil || !g.BlockPrivate {
		return ""
	}
	for _, p := range g.Allow {
		if p.Contains(addr) {
			return ""
		}
	}
	for _, p := range privateNetworks {
		if p.Contains(addr) {
			return fmt.Sprintf("private or loopback network (%s) is refused by delivery.block_private_networks; add it to delivery.allow_networks to allow it", p)
		}
	}
	return ""
}

// AllowProblem says why an allow_networks entry can never let an address
// through, or "": it lies within an always-refused network, or is written
// in an IPv6 form whose addresses are checked as the IPv4 address inside
// (IPv4-mapped, NAT64, 6to4).
func AllowProblem(p netip.Prefix) string {
	for _, b := range alwaysBlocked {
		if b.Overlaps(p) && b.Bits() <= p.Bits() {
			return fmt.Sprintf("lies within %s, a link-local or cloud metadata network, which is always refused", b)
		}
	}
	a := p.Addr()
	if a.Is4In6() || nat64.Contains(a) || sixToFour.Contains(a) {
		return "is an IPv6 form of IPv4 addresses, which are checked in their IPv4 form: write the IPv4 network"
	}
	return ""
}

// Dialer returns a dial function that applies the guard to the address
// each connection is made to.
func (g *EgressGuard) Dialer(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:   timeout,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return &blockedError{addr: address, reason: "unparseable address"}
			}
			ip, err := netip.ParseAddr(host)
			if err != nil {
				return &blockedError{addr: address, reason: "not an IP address"}
			}
			if reason := g.Check(ip); reason != "" {
				return &blockedError{addr: address, reason: reason}
			}
			return nil
		},
	}
	return d.DialContext
}
