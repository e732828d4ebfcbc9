package fanout

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Private certificate authorities (delivery.ca_file) and client
// certificates (subscriptions[].tls). Verification of receivers'
// certificates is never turned off: a private CA is added to the roots
// (or replaces them), never a reason to skip the check.

// maxPEMFile bounds a PEM file dzhook reads: a bundle of every public
// root is about 200 KB.
const maxPEMFile = 4 << 20

// ReadPEM reads a PEM file named in the configuration. Only a regular
// file of at most 4 MiB: a device or a pipe named by mistake would block
// `dzhook validate`, or never end.
func ReadPEM(file string) ([]byte, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMFile {
		return nil, errors.New("larger than 4 MiB: not a PEM file")
	}
	return b, nil
}

// ReadCertificates returns the certificates of a PEM file, in order. It
// fails on a file that cannot be read (ReadPEM), a CERTIFICATE block that
// does not parse, or a file with no CERTIFICATE block at all; other
// blocks (a key in a combined file, parameters) are skipped.
func ReadCertificates(file string) ([]*x509.Certificate, error) {
	b, err := ReadPEM(file)
	if err != nil {
		return nil, err
	}
	return parseCertificates(b)
}

func parseCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// RootCAs returns the pool receivers' certificates are verified with:
// the system's roots plus the certificates of caFile, or those alone with
// replaceSystem. An empty caFile means the system's roots (nil).
func RootCAs(caFile string, replaceSystem bool) (*x509.CertPool, error) {
	if caFile == "" {
		return nil, nil
	}
	certs, err := ReadCertificates(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !replaceSystem {
		if pool, err = x509.SystemCertPool(); err != nil {
			return nil, fmt.Errorf("system certificate pool: %w", err)
		}
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// ClientCert names the PEM files of the certificate a subscription
// presents to a receiver that asks for one (mutual TLS). The zero value
// presents none.
type ClientCert struct {
	CertFile, KeyFile string
}

// IsZero reports whether no client certificate is configured.
func (c ClientCert) IsZero() bool { return c == ClientCert{} }

// clientCertRecheck is how often, at most, a client certificate's files
// are read again to see whether they were replaced.
const clientCertRecheck = time.Second

// clientCert is a client certificate that follows its files: certificates
// rotate (cert-manager, Vault, a cron job), and a subscription must pick
// the new pair up without a restart. The files are read again at most
// once per clientCertRecheck, when a receiver asks for a certificate
// (tls.Config.GetClientCertificate); a pair that does not load (a file
// half written, a key that does not match yet) leaves the previous one in
// use, with one warning per state of the files. Only new connections
// present a new certificate: a kept-alive connection keeps the handshake
// it was made with.
type clientCert struct {
	files ClientCert
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	sum     [sha256.Size]byte // of the files the current pair came from
	checked time.Time
	// warned is set while the files do not load and that was logged;
	// warnedSum is the digest of the files then (zero: unreadable).
	warned    bool
	warnedSum [sha256.Size]byte
}

// loadClientCert loads the pair: the one time a failure is an error
// (the configuration named files that do not make a certificate).
func loadClientCert(files ClientCert, log *slog.Logger, now func() time.Time) (*clientCert, error) {
	certPEM, keyPEM, sum, err := files.read()
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s with key %s: %w", files.CertFile, files.KeyFile, err)
	}
	return &clientCert{files: files, log: log, now: now, cert: &cert, sum: sum, checked: now()}, nil
}

// read returns the files' contents and a digest of both.
func (c ClientCert) read() (certPEM, keyPEM []byte, sum [sha256.Size]byte, err error) {
	if certPEM, err = ReadPEM(c.CertFile); err != nil {
		return nil, nil, sum, fmt.Errorf("client certificate %s: %w", c.CertFile, err)
	}
	if keyPEM, err = ReadPEM(c.KeyFile); err != nil {
		return nil, nil, sum, fmt.Errorf("client certificate key %s: %w", c.KeyFile, err)
	}
	h := sha256.New()
	// Lengths first, so that no two pairs of contents hash alike.
	fmt.Fprintf(h, "%d:%d:", len(certPEM), len(keyPEM))
	h.Write(certPEM)
	h.Write(keyPEM)
	copy(sum[:], h.Sum(nil))
	return certPEM, keyPEM, sum, nil
}

// get is tls.Config.GetClientCertificate: the current pair, reloaded
// first if its files changed.
func (c *clientCert) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if now.Sub(c.checked) < clientCertRecheck {
		return c.cert, nil
	}
	c.checked = now
	certPEM, keyPEM, sum, err := c.files.read()
	if err == nil && sum == c.sum {
		c.warned = false
		return c.cert, nil
	}
	var cert tls.Certificate
	if err == nil {
		cert, err = tls.X509KeyPair(certPEM, keyPEM)
	}
	if err != nil {
		// Warn once per state of the files: they are read again every
		// second while handshakes go on.
		if !c.warned || sum != c.warnedSum {
			c.warned, c.warnedSum = true, sum
			c.log.Warn("client certificate files changed but do not load; the previous certificate is still presented",
				"cert_file", c.files.CertFile, "key_file", c.files.KeyFile, "err", err)
		}
		return c.cert, nil
	}
	c.cert, c.sum, c.warned = &cert, sum, false
	attrs := []any{"cert_file", c.files.CertFile}
	if cert.Leaf != nil {
		attrs = append(attrs, "serial", cert.Leaf.SerialNumber.String(), "not_after", cert.Leaf.NotAfter)
	}
	c.log.Info("client certificate reloaded", attrs...)
	return c.cert, nil
}
