package fanout

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/http"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/signer"
)

// Subscription is one webhook endpoint, as configured.
type Subscription struct {
	ID  string
	URL string
	// Events are exact names or globs (request.*, *).
	Events []string
	// Secret signs X-DZDESK-Signature.
	Secret []byte
	// StandardWebhooks adds webhook-id, webhook-timestamp and
	// webhook-signature (the secret must be whsec_…).
	StandardWebhooks bool
	// Active false: nothing is sent.
	Active bool
	// QueueWhileInactive keeps deliveries while inactive or paused and
	// sends them, oldest first, on resume; otherwise they are skipped.
	QueueWhileInactive bool
	// Filter is a CEL expression over the envelope; "" matches all.
	Filter string
	// Headers are added to every POST.
	Headers map[string]string
}

// Health states of a subscription.
const (
	StateHealthy  = "healthy"
	StateFailing  = "failing"
	StateDisabled = "disabled"
)

// sub is a subscription at run time: its queue, workers' client, health.
type sub struct {
	cfg         Subscription
	filter      *filter.Program
	headers     http.Header
	standardKey []byte
	client      *retryablehttp.Client

	queue    chan *task
	reserved atomic.Int64 // queue places taken or promised
	size     int64

	mu            sync.Mutex
	state         string // healthy, failing, disabled
	paused        bool
	lastSuccessAt time.Time
	lastFailureAt time.Time
	lastStatus    int
	lastError     string
}

// task is one attempt to make.
type task struct {
	deliveryID, eventID, eventType string
	body                           []byte
	attempts                       int    // attempts made before this one
	trigger                        string // auto, manual, test
	test                           bool
	reply                          chan<- attemptResult // manual and test attempts wait for theirs
}

// Attempt triggers.
const (
	TriggerAuto   = "auto"
	TriggerManual = "manual"
	TriggerTest   = "test"
)

// matches reports whether the subscription's patterns select an event
// type.
func (s *sub) matches(eventType string) bool {
	for _, p := range s.cfg.Events {
		if p == eventType {
			return true
		}
		if ok, _ := path.Match(p, eventType); ok {
			return true
		}
	}
	return false
}

// accepting reports whether deliveries are sent now: active, not paused,
// not disabled.
func (s *sub) accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Active && !s.paused && s.state != StateDisabled
}

// reserve takes n places in the queue, or as many as are free; it
// returns how many it took.
func (s *sub) reserve(n int64) int64 {
	for {
		cur := s.reserved.Load()
		free := s.size - cur
		if free <= 0 {
			return 0
		}
		take := min(n, free)
		if s.reserved.CompareAndSwap(cur, cur+take) {
			return take
		}
	}
}

// release gives back places reserved and not used.
func (s *sub) release(n int64) { s.reserved.Add(-n) }

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// DeliveryID is the id of the delivery of an event to a subscription:
// derived from the pair, so a replay finds the delivery it made before.
func DeliveryID(eventID, subscriptionID string) string {
	h := sha256.New()
	h.Write([]byte(eventID))
	h.Write([]byte{0})
	h.Write([]byte(subscriptionID))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return "dlv_" + idEncoding.EncodeToString(sum[:16])
}

// compile prepares a subscription for delivery.
func compile(cfg Subscription, timeout time.Duration, concurrency, queueSize int, dialer dialFunc, opts *Config) (*sub, error) {
	s := &sub{cfg: cfg, queue: make(chan *task, queueSize), size: int64(queueSize), state: StateHealthy, headers: http.Header{}}
	if cfg.Filter != "" {
		p, err := filter.Compile(cfg.Filter)
		if err != nil {
			return nil, fmt.Errorf("subscription %s: filter: %w", cfg.ID, err)
		}
		s.filter = p
	}
	if cfg.StandardWebhooks {
		key, err := signer.StandardKey(string(cfg.Secret))
		if err != nil {
			return nil, fmt.Errorf("subscription %s: standard webhooks secret: %w", cfg.ID, err)
		}
		s.standardKey = key
	}
	for k, v := range cfg.Headers {
		s.headers.Set(k, v)
	}
	s.client = newClient(timeout, concurrency, dialer, opts.RootCAs)
	return s, nil
}
