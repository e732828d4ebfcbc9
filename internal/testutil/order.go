package testutil

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Attempt is one request an OrderReceiver got: an attempt of a delivery.
type Attempt struct {
	// EventID, Type and Key come from the envelope: its id, its event
	// and its data.id (the request's or user's id: the ordering key of
	// the reference mapping's events).
	EventID, Type, Key string
	// Title is the envelope's data.title (a request's), for tests that
	// check what arrived, not only how much.
	Title string
	// Agent is the request's User-Agent: which dzhook sent it.
	Agent string
	// N counts the attempts of this event the receiver saw, from 1.
	N int
	// Status is what the receiver answered.
	Status int
	// Start and End are positions on the receiver's clock (a counter, not
	// time, so no two are equal): when the attempt began and when it was
	// answered. At is when it began, on the wall clock.
	Start, End int64
	At         time.Time
}

// OrderReceiver is a webhook endpoint for the ordered delivery tests: it
// records every attempt with the event's id, type and key, answers 500
// where Fail says so (2xx otherwise), and notes every key that had two
// attempts in progress at once.
type OrderReceiver struct {
	*httptest.Server
	fail func(a Attempt) bool

	mu       sync.Mutex
	clock    int64
	attempts []Attempt
	seen     map[string]int // event id → attempts
	inFlight map[string]int // key → attempts in progress
	all      int            // attempts in progress, all keys
	maxAll   int
	overlaps []string // "key: event a while event b" of every overlap
	running  map[string]string
	got      chan struct{}
	// delay is each attempt's service time in nanoseconds (SetDelay);
	// 1 ms unless set.
	delay atomic.Int64
}

// NewOrderReceiver starts an OrderReceiver for the test; fail (nil: never)
// chooses the attempts answered 500. Each attempt takes a millisecond, so
// that attempts that would overlap do.
func NewOrderReceiver(t testing.TB, fail func(a Attempt) bool) *OrderReceiver {
	rc := &OrderReceiver{fail: fail, seen: map[string]int{}, inFlight: map[string]int{}, running: map[string]string{}, got: make(chan struct{}, 1)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *OrderReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var env struct {
		ID    string `json:"id"`
		Event string `json:"event"`
		Data  struct {
			ID    string `json:"id"`
			Title string `json:"title"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	rc.clock++
	rc.seen[env.ID]++
	a := Attempt{EventID: env.ID, Type: env.Event, Key: env.Data.ID, Title: env.Data.Title, Agent: r.UserAgent(), N: rc.seen[env.ID], Start: rc.clock, At: time.Now()}
	rc.inFlight[a.Key]++
	if rc.inFlight[a.Key] > 1 {
		rc.overlaps = append(rc.overlaps, fmt.Sprintf("%s: %s (%s) while %s", a.Key, a.EventID, a.Type, rc.running[a.Key]))
	}
	rc.running[a.Key] = a.EventID
	rc.all++
	rc.maxAll = max(rc.maxAll, rc.all)
	rc.mu.Unlock()

	// The receiver's work: overlapping attempts do overlap.
	time.Sleep(max(time.Duration(rc.delay.Load()), time.Millisecond))

	a.Status = http.StatusOK
	if rc.fail != nil && rc.fail(a) {
		a.Status = http.StatusInternalServerError
	}
	rc.mu.Lock()
	rc.inFlight[a.Key]--
	rc.all--
	rc.clock++
	a.End = rc.clock
	rc.attempts = append(rc.attempts, a)
	rc.mu.Unlock()
	select {
	case rc.got <- struct{}{}:
	default:
	}
	w.WriteHeader(a.Status)
}

// SetDelay makes every attempt take d (the receiver's service time).
func (rc *OrderReceiver) SetDelay(d time.Duration) { rc.delay.Store(int64(d)) }

// Attempts returns every attempt answered so far, in the order answered.
func (rc *OrderReceiver) Attempts() []Attempt {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Attempt(nil), rc.attempts...)
}

// MaxInFlight is the most attempts in progress at once, all keys.
func (rc *OrderReceiver) MaxInFlight() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.maxAll
}

// Overlaps lists the attempts that began while another of their key was
// in progress.
func (rc *OrderReceiver) Overlaps() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.overlaps...)
}

// Delivered returns the events answered 2xx at least once, each with its
// first such attempt.
func (rc *OrderReceiver) Delivered() map[string]Attempt {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]Attempt{}
	for _, a := range rc.attempts {
		if _, ok := out[a.EventID]; !ok && a.Status/100 == 2 {
			out[a.EventID] = a
		}
	}
	return out
}

// WaitDelivered waits until n distinct events were answered 2xx.
func (rc *OrderReceiver) WaitDelivered(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := len(rc.Delivered()); got >= n {
			return
		}
		select {
		case <-rc.got:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("receiver: timed out after %s waiting for %d delivered events; got %d", timeout, n, len(rc.Delivered()))
		}
	}
}

// CheckOrder asserts the ordered delivery promise on what arrived, with
// orderKey mapping an attempt's key to its ordering key (the key itself
// under ordering: entity, one constant under ordering: subscription).
// Event ids of one database sort as their positions in the stream, so
// "earlier" is a smaller event id:
//
//   - every event was delivered (answered 2xx) at least once;
//   - per ordering key, the first 2xx of each event came in stream order;
//   - strict: no attempt of an event began before every earlier event of
//     its ordering key had got its first 2xx (the next delivery of a key
//     waits for the previous one to finish), and no two attempts of a key
//     were in progress at once.
//
// Without strict (across a crash) only the first two hold: an event
// delivered before a kill may come again later (at-least-once), but a
// later event never got its first 2xx before an earlier one of its key.
// It returns the first deliveries per ordering key, in order.
func (rc *OrderReceiver) CheckOrder(t testing.TB, orderKey func(key string) string, strict bool) map[string][]Attempt {
	t.Helper()
	attempts := rc.Attempts()
	first := rc.Delivered()
	perKey := map[string][]Attempt{}
	for _, a := range first {
		k := orderKey(a.Key)
		perKey[k] = append(perKey[k], a)
	}
	for k, as := range perKey {
		byArrival := append([]Attempt(nil), as...)
		sort.Slice(byArrival, func(i, j int) bool { return byArrival[i].End < byArrival[j].End })
		for i := 1; i < len(byArrival); i++ {
			if prev, cur := byArrival[i-1], byArrival[i]; cur.EventID < prev.EventID {
				t.Errorf("key %q: %s (%s, %s) was first delivered after %s (%s, %s), which is later in the stream",
					k, prev.EventID, prev.Type, prev.Key, cur.EventID, cur.Type, cur.Key)
			}
		}
		perKey[k] = byArrival
	}
	for _, a := range attempts {
		if _, ok := first[a.EventID]; !ok {
			t.Errorf("event %s (%s, %s) was attempted %d times and never delivered", a.EventID, a.Type, a.Key, a.N)
		}
	}
	if !strict {
		return perKey
	}
	if o := rc.Overlaps(); len(o) > 0 {
		t.Errorf("%d attempts began while another of their key was in progress, e.g. %s", len(o), strings.Join(o[:min(len(o), 5)], "; "))
	}
	byID := map[string][]Attempt{}
	for k, as := range perKey {
		byID[k] = append([]Attempt(nil), as...)
		sort.Slice(byID[k], func(i, j int) bool { return byID[k][i].EventID < byID[k][j].EventID })
	}
	bad := 0
	for _, a := range attempts {
		for _, earlier := range byID[orderKey(a.Key)] {
			if earlier.EventID >= a.EventID {
				break
			}
			if earlier.End > a.Start {
				if bad++; bad <= 5 {
					t.Errorf("key %q: attempt %d of %s (%s) began before the earlier %s (%s) was delivered",
						orderKey(a.Key), a.N, a.EventID, a.Type, earlier.EventID, earlier.Type)
				}
				break
			}
		}
	}
	return perKey
}
