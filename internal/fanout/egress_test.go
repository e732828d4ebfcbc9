package fanout

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestEgressCheck(t *testing.T) {
	open := &EgressGuard{}
	strict := &EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("100.100.0.0/16")}}
	for _, tc := range []struct {
		addr          string
		open, strict  bool // allowed?
		strictMessage string
	}{
		{"169.254.169.254", false, false, "metadata"},
		{"::ffff:169.254.169.254", false, false, "metadata"},
		{"fe80::1", false, false, "link-local"},
		{"fd00:ec2::254", false, false, "metadata"},
		{"127.0.0.1", true, false, "allow_networks"},
		{"::1", true, false, "private or loopback"},
		{"0.0.0.0", true, false, "private"},
		{"10.0.0.5", true, false, "10.0.0.0/8"},
		{"10.1.2.3", true, true, ""},
		{"172.20.1.1", true, false, "172.16.0.0/12"},
		{"192.168.1.1", true, false, "192.168.0.0/16"},
		{"::ffff:192.168.1.1", true, false, "192.168.0.0/16"},
		{"fd12::1", true, false, "fc00::/7"},
		{"100.64.0.1", true, false, "100.64.0.0/10"},
		// A zone must not hide the address (Prefix.Contains never
		// matches a zoned one; Linux ignores most zones when dialling).
		{"fe80::1%eth0", false, false, "link-local"},
		{"fd00:ec2::254%eth0", false, false, "metadata"},
		{"::1%lo", true, false, "private or loopback"},
		// IPv4 inside NAT64 and 6to4 addresses is what is reached.
		{"64:ff9b::a9fe:a9fe", false, false, "metadata"},
		{"64:ff9b::a00:5", true, false, "10.0.0.0/8"},
		{"64:ff9b::7f00:1", true, false, "127.0.0.0/8"},
		{"64:ff9b::5db8:d822", true, true, ""},
		{"2002:a9fe:a9fe::1", false, false, "metadata"},
		{"2002:c0a8:101::1", true, false, "192.168.0.0/16"},
		{"64:ff9b:1::a00:5", true, false, "64:ff9b:1::/48"},
		{"64:ff9b:1::5db8:d822", true, false, "64:ff9b:1::/48"},
		// The local-use prefix's layout is the operator's: the metadata
		// address is refused in any of RFC 6052's (/96 and /48 here).
		{"64:ff9b:1::a9fe:a9fe", false, false, "metadata"},
		{"64:ff9b:1:a9fe:a9:fe00::", false, false, "metadata"},
		// Other clouds' metadata services, whatever allow_networks says.
		{"100.100.100.200", false, false, "metadata"},
		{"168.63.129.16", false, false, "metadata"},
		{"fd20:ce::254", false, false, "metadata"},
		{"100.100.1.1", true, true, ""},
		// Special-purpose ranges a private network may use.
		{"198.18.0.1", true, false, "198.18.0.0/15"},
		{"192.0.0.192", true, false, "192.0.0.0/24"},
		{"240.0.0.1", true, false, "240.0.0.0/4"},
		{"fec0::1", true, false, "fec0::/10"},
		{"100::1", true, false, "100::/64"},
		{"::7f00:1", true, false, "127.0.0.0/8"},
		{"::ffff:0:7f00:1", true, false, "127.0.0.0/8"},
		{"::a9fe:a9fe", false, false, "metadata"},
		{"::ffff:0:a9fe:a9fe", false, false, "metadata"},
		{"fd00:ec2::23", false, false, "metadata"},
		{"::", true, false, "::/96"},
		{"93.184.216.34", true, true, ""},
		{"2606:2800:220:1::1", true, true, ""},
	} {
		ip := netip.MustParseAddr(tc.addr)
		if got := open.Check(ip) == ""; got != tc.open {
			t.Errorf("open guard, %s: allowed %v, want %v", tc.addr, got, tc.open)
		}
		msg := strict.Check(ip)
		if got := msg == ""; got != tc.strict || !strings.Contains(msg, tc.strictMessage) {
			t.Errorf("strict guard, %s: %q, want allowed %v with %q", tc.addr, msg, tc.strict, tc.strictMessage)
		}
	}
	nat64Allowed := &EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{nat64Local}}
	if msg := nat64Allowed.Check(netip.MustParseAddr("64:ff9b:1::a9fe:a9fe")); !strings.Contains(msg, "metadata") {
		t.Errorf("with the local-use NAT64 prefix in allow_networks, its metadata address: %q, want refused", msg)
	}
	var nilGuard *EgressGuard
	if nilGuard.Check(netip.MustParseAddr("169.254.169.254")) == "" {
		t.Error("a nil guard lets the metadata address through")
	}
}

// TestEgressOnTheWire: the guard refuses the dialled address, and the
// attempt records why, with error class blocked.
func TestEgressOnTheWire(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }))
	defer srv.Close()
	attempt := func(g *EgressGuard, url string) attemptResult {
		c := newClient(time.Second, 1, g.Dialer(time.Second), nil)
		return post(context.Background(), c, request{url: url, body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, time.Second, 100)
	}
	if res := attempt(&EgressGuard{BlockPrivate: true}, srv.URL); res.ErrorClass != ClassBlocked || !strings.Contains(res.Error, "block_private_networks") {
		t.Errorf("loopback with block_private_networks: %+v", res)
	}
	if res := attempt(&EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, srv.URL); res.Status != 200 {
		t.Errorf("loopback allowed by allow_networks: %+v", res)
	}
	// A name that resolves to a blocked address is refused after
	// resolution: localhost under block_private_networks.
	if res := attempt(&EgressGuard{BlockPrivate: true}, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)); res.ErrorClass != ClassBlocked {
		t.Errorf("localhost by name: %+v", res)
	}
	if res := attempt(nil, "http://169.254.169.254/latest/meta-data/"); res.ErrorClass != ClassBlocked || !strings.Contains(res.Error, "metadata") {
		t.Errorf("metadata address: %+v", res)
	}
	// Loopback with a zone, which Linux dials as plain ::1.
	v6 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }))
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		// TestEgressCheck covers zoned addresses without the network.
		t.Logf("no IPv6 loopback here, the zoned dial is not tried: %v", err)
		return
	}
	v6.Listener = ln
	v6.Start()
	defer v6.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if res := attempt(&EgressGuard{}, fmt.Sprintf("http://[::1%%25lo]:%d/", port)); res.Status != 200 {
		t.Fatalf("control: ::1 with a zone, no blocking: %+v", res)
	}
	if res := attempt(&EgressGuard{BlockPrivate: true}, fmt.Sprintf("http://[::1%%25lo]:%d/", port)); res.ErrorClass != ClassBlocked {
		t.Errorf("::1 with a zone under block_private_networks: %+v", res)
	}
}
