package engine

import (
	"context"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/testutil"
)

func TestSubscriptionEgress(t *testing.T) {
	got := Subscription(config.Subscription{ID: "crm", Proxy: "http://u:p@proxy.internal:3128",
		TLS: config.ClientTLS{CertFile: "/etc/dzhook/crm.pem", KeyFile: "/etc/dzhook/crm-key.pem"}})
	if got.Proxy != "http://u:p@proxy.internal:3128" || got.ClientCert != (fanout.ClientCert{CertFile: "/etc/dzhook/crm.pem", KeyFile: "/etc/dzhook/crm-key.pem"}) {
		t.Errorf("proxy %q, client certificate %+v", got.Proxy, got.ClientCert)
	}
	if got := Subscription(config.Subscription{ID: "plain"}); got.Proxy != "" || !got.ClientCert.IsZero() {
		t.Errorf("a subscription without either: proxy %q, client certificate %+v; want none (delivery.proxy applies)", got.Proxy, got.ClientCert)
	}
}

// peerRecorder is an https receiver that records each request's path and
// peer address.
type peerRecorder struct {
	*httptest.Server
	mu    sync.Mutex
	peers map[string][]string // path → RemoteAddr of each request
}

func newPeerRecorder(t *testing.T) *peerRecorder {
	rc := &peerRecorder{peers: map[string][]string{}}
	rc.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		rc.mu.Lock()
		rc.peers[r.URL.Path] = append(rc.peers[r.URL.Path], r.RemoteAddr)
		rc.mu.Unlock()
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *peerRecorder) peersOf(path string) []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.peers[path])
}

// TestEgressThroughProxy: with delivery.proxy, delivery.ca_file (the
// only root, ca_replace_system) and a subscription with a proxy of its
// own, each subscription's deliveries reach the https receiver through
// its proxy, verified with the private CA; a subscription created
// through the admin API goes through delivery.proxy.
func TestEgressThroughProxy(t *testing.T) {
	db := newDB(t)
	rc := newPeerRecorder(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	// httptest's certificate is its own CA: the private CA here.
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rc.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	global := testutil.NewProxy(t, "127.0.0.1:0", "", nil)
	own := testutil.NewProxy(t, "127.0.0.1:0", "", nil)
	cfg := testConfigWith(t, db, "admin:\n  listen: \"\"\nsecrets:\n  key: "+secretsKey+"\n",
		"  proxy: "+global.URL("http", nil)+"\n  ca_file: "+caFile+"\n  ca_replace_system: true",
		sub("crm", rc.URL+"/crm", "request.created"),
		sub("billing", rc.URL+"/billing", "request.created", "proxy: "+own.URL("http", nil)))
	e := start(t, cfg)
	created, err := e.Manager().CreateSubscription(context.Background(), api.SubscriptionInput{URL: ptr(rc.URL + "/rt"), Events: ptr([]string{"request.created"})}, "192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	// The runtime subscription is in force within the engine's poll.
	testutil.Eventually(t, 10*time.Second, "the runtime subscription running", func() bool { return e.Dispatcher().HasSubscription(created.ID) })

	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (7, 'through the proxy', 1)`)
	testutil.Eventually(t, 20*time.Second, "the three deliveries", func() bool {
		return len(rc.peersOf("/crm")) == 1 && len(rc.peersOf("/billing")) == 1 && len(rc.peersOf("/rt")) == 1
	})
	target := strings.TrimPrefix(rc.URL, "https://")
	for _, c := range []struct {
		name  string
		proxy *testutil.Proxy
		paths []string
	}{
		{"delivery.proxy", global, []string{"/crm", "/rt"}},
		{"the subscription's own proxy", own, []string{"/billing"}},
	} {
		connects, _, outbound := c.proxy.Seen()
		if len(connects) != len(c.paths) || slices.ContainsFunc(connects, func(s string) bool { return s != target }) {
			t.Errorf("%s: CONNECT targets %q, want %d to %s", c.name, connects, len(c.paths), target)
		}
		for _, p := range c.paths {
			if peer := rc.peersOf(p)[0]; !slices.Contains(outbound, peer) {
				t.Errorf("%s: the delivery to %s came from %s, not through the proxy (its connections: %q)", c.name, p, peer, outbound)
			}
		}
	}
}
