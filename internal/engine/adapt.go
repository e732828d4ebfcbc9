package engine

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/mapping"
	"github.com/dzdesk/dzhook/internal/metrics"
)

func egressGuard(d config.Delivery) *fanout.EgressGuard {
	g := &fanout.EgressGuard{BlockPrivate: d.BlockPrivateNetworks}
	for _, n := range d.AllowNetworks {
		if p, err := netip.ParsePrefix(n); err == nil { // validated with the configuration
			g.Allow = append(g.Allow, p.Masked())
		}
	}
	return g
}

// bodyLimit is delivery.response_body_limit for fanout, where a zero limit
// means the default: 0 (keep no byte of receivers' answers) is
// fanout.NoResponseBody. config.Default supplies the 4096 of an unset one.
func bodyLimit(n int) int {
	if n == 0 {
		return fanout.NoResponseBody
	}
	return n
}

// rootCAs is the pool receivers' certificates are verified with:
// delivery.ca_file with or instead of the system's roots (nil: the
// system's alone). The file was checked when the configuration loaded; it
// is read again here, once, at start.
func rootCAs(d config.Delivery) (*x509.CertPool, error) {
	pool, err := fanout.RootCAs(d.CAFile, d.CAReplaceSystem)
	if err != nil {
		return nil, fmt.Errorf("delivery.ca_file: %w", err)
	}
	return pool, nil
}

// Subscription converts a configured subscription for fanout. One
// created through the admin API has neither proxy nor client
// certificate: it goes through delivery.proxy, like every subscription
// that names no proxy of its own.
func Subscription(s config.Subscription) fanout.Subscription {
	headers := make(map[string]string, len(s.Headers))
	for k, v := range s.Headers {
		headers[k] = v.Reveal()
	}
	rate, _ := fanout.ParseRate(s.RateLimit) // validated with the configuration ("": none)
	// A rotation's overlap: X-DZDESK-Signature switches at its end, as
	// the API's rotate does by default (end_of_overlap).
	until, _ := time.Parse(time.RFC3339, s.PreviousSecretUntil) // validated with the configuration
	var previous []byte
	if s.PreviousSecret.IsSet() {
		previous = []byte(s.PreviousSecret.Reveal())
	}
	return fanout.Subscription{
		PreviousSecret: previous, PreviousUntil: until, SwitchAt: until,
		ID: s.ID, URL: s.URL, Events: s.Events, Secret: []byte(s.Secret.Reveal()), StandardWebhooks: s.StandardWebhooks,
		Active: s.Active, QueueWhileInactive: s.QueueWhileInactive, Filter: s.Filter, Headers: headers,
		Ordering:  fanout.Ordering(s.Ordering), // validated with the configuration
		Transform: s.Transform, Format: s.Format, Method: strings.ToUpper(s.Method), RateLimit: rate,
		Proxy: s.Proxy.Reveal(), ClientCert: fanout.ClientCert{CertFile: s.TLS.CertFile, KeyFile: s.TLS.KeyFile},
		Traceparent: s.Traceparent,
	}
}

func newInstanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// sample builds a test event of a type with the id prefixes of the
// mapping in effect (a reload may have changed them) and, for a custom
// event, the data its declaration gives (config.TestSamples).
func (e *Engine) sample(eventType string) (fanout.Event, error) {
	return sampler(e.schema.prefixes(), e.customSamples)(eventType)
}

// sampler builds test events of a type, with the mapping's id prefixes
// and custom events' test data (nil: {"sample": true} for every one).
func sampler(p mapping.Prefixes, custom map[string]config.TestSample) func(eventType string) (fanout.Event, error) {
	return func(eventType string) (fanout.Event, error) {
		id, now := ids.TestEventID(), time.Now().UTC()
		body := mapping.SampleWith(eventType, id, now, p)
		if c, ok := custom[eventType]; ok {
			if c.Refused != "" {
				return fanout.Event{}, &admin.SampleError{Message: c.Refused}
			}
			body = mapping.SampleData(eventType, id, now, c.Data)
		}
		return fanout.Event{ID: id, Type: eventType, Timestamp: now, Body: body}, nil
	}
}

func (e *Engine) streamStats() metrics.StreamStats {
	st := e.stream.Stats()
	return metrics.StreamStats{
		ReceivedLSN: uint64(st.ReceivedLSN), FlushedLSN: uint64(st.FlushedLSN), AckedLSN: uint64(st.AckedLSN),
		LagBytes: st.LagBytes, RetainedWALBytes: st.RetainedBytes, Changes: st.Changes, Transactions: st.Transactions, Reconnects: st.Reconnects,
		Connected: st.Connected, Standby: st.Standby,
	}
}
