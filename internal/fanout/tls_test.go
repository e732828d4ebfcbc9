package fanout

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// testCA is a certificate authority made for one test: receivers' and
// clients' certificates are signed by it, and its PEM is what
// delivery.ca_file names.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf certificate: for a server (127.0.0.1, ::1,
// localhost) or, with client, for a client named cn. It returns the PEM
// of the certificate and of its key.
func (ca *testCA) issue(t *testing.T, serial int64, cn string, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv6loopback},
	}
	if client {
		tmpl.ExtKeyUsage, tmpl.DNSNames, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// serverCert is a receiver's certificate signed by ca.
func (ca *testCA) serverCert(t *testing.T) tls.Certificate {
	t.Helper()
	c, k := ca.issue(t, 100, "receiver", false)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// pool is a pool of the CA alone.
func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsReceiver is an https receiver with a certificate from ca. With
// clientCA it requires a client certificate signed by that CA, and
// records the serial of each one presented.
type tlsReceiver struct {
	*httptest.Server
	mu      sync.Mutex
	serials []string // of the client certificates, one per request
	remotes []string // RemoteAddr of each request
}

func newTLSReceiver(t *testing.T, ca, clientCA *testCA, close bool) *tlsReceiver {
	t.Helper()
	rc := &tlsReceiver{}
	rc.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		rc.mu.Lock()
		serial := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			serial = r.TLS.PeerCertificates[0].SerialNumber.String()
		}
		rc.serials = append(rc.serials, serial)
		rc.remotes = append(rc.remotes, r.RemoteAddr)
		rc.mu.Unlock()
		if close {
			// A new connection, so a new handshake, for every attempt.
			w.Header().Set("Connection", "close")
		}
		_, _ = io.WriteString(w, "ok")
	}))
	rc.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	rc.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t)}}
	if clientCA != nil {
		rc.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		rc.TLS.ClientCAs = clientCA.pool()
	}
	rc.StartTLS()
	t.Cleanup(rc.Close)
	return rc
}

func (rc *tlsReceiver) seen() (serials, remotes []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.serials...), append([]string(nil), rc.remotes...)
}

// TestPrivateCA: a receiver whose certificate a private CA signed is
// refused (class tls) with the system's roots, and accepted once
// delivery.ca_file adds the CA, or replaces the roots with it.
func TestPrivateCA(t *testing.T) {
	ca := newTestCA(t, "dzhook test private CA")
	caFile := writeFile(t, filepath.Join(t.TempDir(), "ca.pem"), ca.pem)
	rc := newTLSReceiver(t, ca, nil, false)

	res := post(context.Background(), openClient(faultTimeout, nil), request{url: rc.URL + "/hook", body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, faultTimeout, 100)
	if res.ErrorClass != ClassTLS || !strings.Contains(res.Error, "certificate") {
		t.Errorf("system roots only: %+v, want class tls about the certificate", res)
	}
	for _, replace := range []bool{false, true} {
		pool, err := RootCAs(caFile, replace)
		if err != nil {
			t.Fatal(err)
		}
		res := post(context.Background(), openClient(faultTimeout, pool), request{url: rc.URL + "/hook", body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, faultTimeout, 100)
		if res.Status != 200 {
			t.Errorf("ca_file (replace system roots: %v): %+v, want 200", replace, res)
		}
		// Replacing leaves the CA alone in the pool; adding keeps the
		// system's roots beside it.
		if got := pool.Equal(ca.pool()); got != replace {
			t.Errorf("ca_replace_system %v: pool is the CA alone: %v", replace, got)
		}
	}
	if pool, err := RootCAs("", false); pool != nil || err != nil {
		t.Errorf("no ca_file: %v, %v; want nil (the system's roots)", pool, err)
	}
}

func TestReadCertificates(t *testing.T) {
	ca := newTestCA(t, "bundle")
	other := newTestCA(t, "bundle 2")
	dir := t.TempDir()
	_, key := ca.issue(t, 2, "x", true)
	bundle := writeFile(t, filepath.Join(dir, "bundle.pem"), append(append(append([]byte("# a comment line\n"), ca.pem...), key...), other.pem...))
	certs, err := ReadCertificates(bundle)
	if err != nil || len(certs) != 2 || certs[1].Subject.CommonName != "bundle 2" {
		t.Fatalf("bundle of two with a key between: %d certificates, %v", len(certs), err)
	}
	for name, content := range map[string][]byte{
		"not PEM":      []byte("just some text\n"),
		"key only":     key,
		"broken block": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}),
	} {
		if _, err := ReadCertificates(writeFile(t, filepath.Join(dir, "f.pem"), content)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ReadCertificates(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing file: accepted")
	}
}

// issueFiles writes a client certificate of ca (and its key), with
// serial, to certFile and keyFile.
func (ca *testCA) issueFiles(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	c, k := ca.issue(t, serial, fmt.Sprintf("dzhook %d", serial), true)
	writeFile(t, certFile, c)
	writeFile(t, keyFile, k)
}

// TestClientCertificate: a receiver that requires a client certificate
// refuses an attempt without one (class tls) and accepts one with the
// subscription's; when the files are replaced, the next connection
// presents the new certificate, without a restart; files that do not
// load (half written) leave the previous certificate in use, with one
// warning.
func TestClientCertificate(t *testing.T) {
	serverCA, clientCA := newTestCA(t, "receivers"), newTestCA(t, "clients")
	rc := newTLSReceiver(t, serverCA, clientCA, false)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	issue := func(serial int64) { clientCA.issueFiles(t, serial, certFile, keyFile) }
	req := request{url: rc.URL + "/hook", body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}
	post1 := func(c *clientConfig) attemptResult {
		return post(context.Background(), newEgressClient(*c), req, faultTimeout, 100)
	}
	cc := &clientConfig{timeout: faultTimeout, concurrency: 1, dial: (&EgressGuard{}).Dialer(faultTimeout), rootCAs: serverCA.pool()}

	// Without a certificate: the receiver's alert comes after our side
	// of a TLS 1.3 handshake finished, on the first read; it is tls.
	if res := post1(cc); res.ErrorClass != ClassTLS || !strings.Contains(res.Error, "certificate required") {
		t.Errorf("no client certificate: %+v, want class tls (certificate required)", res)
	}

	issue(1)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	var logs testutil.SyncBuffer
	cert, err := loadClientCert(ClientCert{CertFile: certFile, KeyFile: keyFile}, slog.New(slog.NewTextHandler(&logs, nil)), clock)
	if err != nil {
		t.Fatal(err)
	}
	cc.clientCert = cert
	client := newEgressClient(*cc)
	send := func() attemptResult { return post(context.Background(), client, req, faultTimeout, 100) }
	// lastSerial makes one attempt on a new connection and returns the
	// serial the receiver saw. A kept-alive connection keeps the
	// handshake it was made with, so the certificate it presented: a
	// rotation reaches receivers as connections are renewed (by the
	// receiver, the idle timeout, or a failure, which closes them).
	lastSerial := func() string {
		t.Helper()
		client.HTTPClient.CloseIdleConnections()
		if res := send(); res.Status != 200 {
			t.Fatalf("with a client certificate: %+v", res)
		}
		serials, _ := rc.seen()
		return serials[len(serials)-1]
	}
	if got := lastSerial(); got != "1" {
		t.Fatalf("serial %q presented, want 1", got)
	}

	// Rotation: new files, another serial and subject. Read again only
	// once a second has passed.
	issue(2)
	if got := lastSerial(); got != "1" {
		t.Errorf("within a second of the last check the files were read again: serial %q", got)
	}
	now.Add(int64(clientCertRecheck))
	if got := lastSerial(); got != "2" {
		t.Errorf("after rotation: serial %q presented, want 2", got)
	}

	// A half-written rotation: the certificate is new, the key is not
	// there yet. The previous pair goes on, with one warning however
	// many handshakes see the files so.
	c3, k3 := clientCA.issue(t, 3, "dzhook 3", true)
	writeFile(t, certFile, c3)
	writeFile(t, keyFile, k3[:len(k3)/2])
	for range 3 {
		now.Add(int64(clientCertRecheck))
		if got := lastSerial(); got != "2" {
			t.Errorf("with a half-written key: serial %q presented, want the previous 2", got)
		}
	}
	if n := strings.Count(logs.String(), "do not load"); n != 1 {
		t.Errorf("%d warnings about files that do not load, want 1:\n%s", n, logs.String())
	}
	writeFile(t, keyFile, k3)
	now.Add(int64(clientCertRecheck))
	if got := lastSerial(); got != "3" {
		t.Errorf("after the key was written: serial %q presented, want 3", got)
	}
	if n := strings.Count(logs.String(), "client certificate reloaded"); n != 2 {
		t.Errorf("%d reloads logged, want 2", n)
	}
}

// TestClientCertificateInDispatcher: a subscription with a client
// certificate delivers to a receiver that requires one, and a rotation
// of its files is presented on a later connection with nothing
// restarted (the real clock: files are read again after a second).
func TestClientCertificateInDispatcher(t *testing.T) {
	store := newJournal(t)
	serverCA, clientCA := newTestCA(t, "receivers"), newTestCA(t, "clients")
	rc := newTLSReceiver(t, serverCA, clientCA, true)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	issue := func(serial int64) { clientCA.issueFiles(t, serial, certFile, keyFile) }
	issue(1)
	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "mtls", URL: rc.URL + "/hook", Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true,
			ClientCert: ClientCert{CertFile: certFile, KeyFile: keyFile}}},
		Journal: store, Instance: "i1", PollInterval: 50 * time.Millisecond, RootCAs: serverCA.pool(),
	})
	// Enough events to outlast the second before the files are read
	// again: one goes out per poll of Eventually, once the previous one
	// arrived.
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("req_%d", i)
	}
	evs := orderEvents(keys)
	ctx := context.Background()
	if err := d.Dispatch(ctx, evs[0]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the first delivery", func() bool { s, _ := rc.seen(); return len(s) == 1 })
	if s, _ := rc.seen(); s[0] != "1" {
		t.Fatalf("serial %q presented, want 1", s[0])
	}
	issue(2)
	// Each delivery is a new connection (the receiver closes them);
	// within a few seconds one presents the new certificate.
	next := 1
	testutil.Eventually(t, 15*time.Second, "a delivery with the rotated certificate", func() bool {
		s, _ := rc.seen()
		if s[len(s)-1] == "2" {
			return true
		}
		if len(s) == next && next < len(evs) {
			if err := d.Dispatch(ctx, evs[next]); err != nil {
				t.Fatal(err)
			}
			next++
		}
		return false
	})
}
