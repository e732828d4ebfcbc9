package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pemPair writes a self-signed certificate and its key to dir and
// returns their paths.
func pemPair(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	write(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEgressDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, s := cfg.Delivery, cfg.Subscriptions[0]
	if d.Proxy.IsSet() || d.CAFile != "" || d.CAReplaceSystem {
		t.Errorf("delivery.proxy, ca_file, ca_replace_system = %v, %q, %v; want none, none, false", d.Proxy, d.CAFile, d.CAReplaceSystem)
	}
	if s.Proxy.IsSet() || s.TLS != (ClientTLS{}) {
		t.Errorf("subscriptions[0].proxy, tls = %v, %+v; want none (delivery.proxy), none", s.Proxy, s.TLS)
	}
}

func TestEgressSettings(t *testing.T) {
	dir := t.TempDir()
	caFile, _ := pemPair(t, dir, "ca")
	certFile, keyFile := pemPair(t, dir, "client")
	yaml := minimal + fmt.Sprintf(`    proxy: http://crm-proxy.internal:3128
    tls:
      cert_file: %s
      key_file: %s
delivery:
  proxy: https://dzhook:${PROXY_PASSWORD}@proxy.internal:8443
  ca_file: %s
  ca_replace_system: true
`, certFile, keyFile, caFile)
	cfg, err := Parse([]byte(yaml), []string{"PROXY_PASSWORD=pw-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Delivery.Proxy.Reveal(), "https://dzhook:pw-0123456789@proxy.internal:8443"; got != want {
		t.Errorf("delivery.proxy = %q, want %q", got, want)
	}
	if cfg.Delivery.CAFile != caFile || !cfg.Delivery.CAReplaceSystem {
		t.Errorf("delivery.ca_file, ca_replace_system = %q, %v", cfg.Delivery.CAFile, cfg.Delivery.CAReplaceSystem)
	}
	s := cfg.Subscriptions[0]
	if s.Proxy.Reveal() != "http://crm-proxy.internal:3128" || s.TLS != (ClientTLS{CertFile: certFile, KeyFile: keyFile}) {
		t.Errorf("subscriptions[0].proxy, tls = %q, %+v", s.Proxy.Reveal(), s.TLS)
	}
	// From the environment, as every delivery setting.
	cfg, err = Parse([]byte(minimal), []string{"DZHOOK_DELIVERY_PROXY=http://proxy.internal:3128", "DZHOOK_DELIVERY_CA_FILE=" + caFile})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Delivery.Proxy.Reveal() != "http://proxy.internal:3128" || cfg.Delivery.CAFile != caFile {
		t.Errorf("from the environment: delivery.proxy %q, ca_file %q", cfg.Delivery.Proxy.Reveal(), cfg.Delivery.CAFile)
	}
}

// TestEgressProblems: each mistake in the egress settings is reported at
// its YAML path, and a proxy's URL is never quoted (it may hold a
// password).
func TestEgressProblems(t *testing.T) {
	dir := t.TempDir()
	caFile, caKey := pemPair(t, dir, "ca")
	certFile, keyFile := pemPair(t, dir, "client")
	_, otherKey := pemPair(t, dir, "other")
	notPEM := filepath.Join(dir, "not.pem")
	write(t, notPEM, []byte("this is not PEM\n"))
	missing := filepath.Join(dir, "missing.pem")
	sub := func(extra string) string { return minimal + extra }
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"proxy without scheme", sub("delivery:\n  proxy: proxy.internal:3128\n"), []string{"delivery.proxy: must be an absolute URL"}},
		{"proxy with another scheme", sub("delivery:\n  proxy: socks5://u:PLANTED-PASSWORD@proxy.internal:1080\n"), []string{"delivery.proxy: its scheme must be http or https"}},
		{"proxy without port", sub("delivery:\n  proxy: http://u:PLANTED-PASSWORD@proxy.internal\n"), []string{"delivery.proxy: has no port"}},
		{"proxy without host", sub("delivery:\n  proxy: http://u:PLANTED-PASSWORD@:3128\n"), []string{"delivery.proxy: has no host"}},
		{"proxy with a path", sub("delivery:\n  proxy: http://u:PLANTED-PASSWORD@proxy.internal:3128/x\n"), []string{"delivery.proxy: must be only scheme://host:port"}},
		{"subscription's proxy", sub("    proxy: ftp://u:PLANTED-PASSWORD@proxy.internal:21\n"), []string{"subscriptions[0].proxy: its scheme must be http or https"}},
		{"missing ca file", sub("delivery:\n  ca_file: " + missing + "\n"), []string{`delivery.ca_file: "` + missing + `" cannot be read: no such file`}},
		{"ca file not PEM", sub("delivery:\n  ca_file: " + notPEM + "\n"), []string{`delivery.ca_file: "` + notPEM + `": no PEM CERTIFICATE block found`}},
		{"ca file holding a key only", sub("delivery:\n  ca_file: " + caKey + "\n"), []string{`delivery.ca_file: "` + caKey + `": no PEM CERTIFICATE block`}},
		{"replace system roots without a ca file", sub("delivery:\n  ca_replace_system: true\n"), []string{"delivery.ca_replace_system: needs delivery.ca_file"}},
		{"cert without key", sub("    tls:\n      cert_file: " + certFile + "\n"), []string{"subscriptions[0].tls.key_file: required with cert_file"}},
		{"key without cert", sub("    tls:\n      key_file: " + keyFile + "\n"), []string{"subscriptions[0].tls.cert_file: required with key_file"}},
		{"missing cert file", sub("    tls:\n      cert_file: " + missing + "\n      key_file: " + keyFile + "\n"), []string{`subscriptions[0].tls.cert_file: "` + missing + `" cannot be read`}},
		{"cert file not PEM", sub("    tls:\n      cert_file: " + notPEM + "\n      key_file: " + keyFile + "\n"), []string{`subscriptions[0].tls.cert_file: "` + notPEM + `": no PEM CERTIFICATE block`}},
		{"missing key file", sub("    tls:\n      cert_file: " + certFile + "\n      key_file: " + missing + "\n"), []string{`subscriptions[0].tls.key_file: "` + missing + `" cannot be read`}},
		{"key that does not match", sub("    tls:\n      cert_file: " + certFile + "\n      key_file: " + otherKey + "\n"), []string{`subscriptions[0].tls.key_file: "` + otherKey + `" does not go with cert_file`, "does not match"}},
		{"key file not PEM", sub("    tls:\n      cert_file: " + certFile + "\n      key_file: " + notPEM + "\n"), []string{`subscriptions[0].tls.key_file: "` + notPEM + `" does not go with cert_file`}},
		{"ca file that is a device", sub("delivery:\n  ca_file: /dev/zero\n"), []string{`delivery.ca_file: "/dev/zero": not a regular file`}},
		{"key file that is a device", sub("    tls:\n      cert_file: " + certFile + "\n      key_file: /dev/zero\n"), []string{`subscriptions[0].tls.key_file: "/dev/zero": not a regular file`}},
		{"unknown key under tls", sub("    tls:\n      cert: " + certFile + "\n"), []string{`subscriptions[0].tls.cert: unknown key`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), nil)
			if err == nil {
				t.Fatal("Parse succeeded, want problems")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("report lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "PLANTED") {
				t.Errorf("the report quotes a proxy's URL:\n%v", err)
			}
		})
	}
	// A good file for the control: everything above was one mistake.
	good := sub(fmt.Sprintf("    tls: {cert_file: %s, key_file: %s}\ndelivery:\n  ca_file: %s\n  proxy: http://proxy.internal:3128\n", certFile, keyFile, caFile))
	if _, err := Parse([]byte(good), nil); err != nil {
		t.Errorf("control: %v", err)
	}
}

// TestProxyNeverPrinted: the proxy's URL, password included, is a
// secret in every form a configuration is printed.
func TestProxyNeverPrinted(t *testing.T) {
	const password = "PROXY-PASSWORD-0123456789"
	yaml := minimal + "    proxy: http://sub:" + password + "@proxy.internal:3128\ndelivery:\n  proxy: http://dzhook:" + password + "@proxy.internal:3128\n"
	cfg, err := Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%v %+v %#v", cfg, cfg, cfg)
	b, _ := json.Marshal(cfg)
	buf.Write(b)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "config", cfg, "delivery", cfg.Delivery, "proxy", cfg.Delivery.Proxy)
	if strings.Contains(buf.String(), password) {
		t.Fatalf("proxy password printed:\n%s", buf.String())
	}
}
