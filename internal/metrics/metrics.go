// Package metrics exposes dzhook's Prometheus metrics, on a registry of
// its own (no global state): events by type, deliveries by subscription
// and outcome, attempt durations, attempts by error class, queue depth and
// the age of the oldest pending delivery, the ordering keys blocked
// behind a retry, replication positions, lag and retained WAL,
// subscription states, journal writes, the journal heartbeat and the
// processes alive on the journal.
package metrics

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
)

// Metrics implements fanout.Observer and collects the rest at scrape time.
type Metrics struct {
	Registry *prometheus.Registry

	events      *prometheus.CounterVec
	deliveries  *prometheus.CounterVec
	attempts    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	errors      *prometheus.CounterVec
	transitions *prometheus.CounterVec
	flushes     prometheus.Histogram
	flushErrors prometheus.Counter
	rejections  prometheus.Counter
	stalled     *prometheus.GaugeVec
	unstreamed  prometheus.Gauge

	// Series looked up once: WithLabelValues hashes and checks its labels
	// at every call, and an event made four or five such calls.
	byType sync.Map // event type -> prometheus.Counter
	bySub  sync.Map // subscription -> *subSeries
	// changed are the subscriptions with a state change counted (their
	// series are the transitions'), for forgetGone.
	changed sync.Map
}

// subSeries are one subscription's series.
type subSeries struct {
	duration prometheus.Observer
	outcomes sync.Map // outcome -> prometheus.Counter
	codes    sync.Map // status code -> prometheus.Counter
}

func (m *Metrics) sub(id string) *subSeries {
	if v, ok := m.bySub.Load(id); ok {
		return v.(*subSeries)
	}
	v, _ := m.bySub.LoadOrStore(id, &subSeries{duration: m.duration.WithLabelValues(id)})
	return v.(*subSeries)
}

// counter returns the counter of vec for labels, kept in cache under key.
func counter[K comparable](cache *sync.Map, key K, vec *prometheus.CounterVec, labels ...string) prometheus.Counter {
	if c, ok := cache.Load(key); ok {
		return c.(prometheus.Counter)
	}
	c, _ := cache.LoadOrStore(key, vec.WithLabelValues(labels...))
	return c.(prometheus.Counter)
}

// Sources are read at scrape time.
type Sources struct {
	// Stream returns the replication positions.
	Stream func() StreamStats
	// Subscriptions returns the subscriptions' status.
	Subscriptions func() []fanout.SubscriptionStatus
	// Backlogs counts the journal's pending work per subscription.
	Backlogs func(ctx context.Context) (map[string]journal.Backlog, error)
	// Heartbeat returns when this process's journal heartbeat last
	// succeeded (zero: not yet) and how many other processes were alive
	// on the journal then.
	Heartbeat func() (last time.Time, peers int)
	// JournalFailingSince is when the journal began refusing the batch
	// being written (zero: writes go through).
	JournalFailingSince func() time.Time
	Logger              *slog.Logger
}

// StreamStats is what the replication stream reports.
type StreamStats struct {
	ReceivedLSN, FlushedLSN, AckedLSN uint64
	LagBytes                          int64 // < 0: unknown, not exported
	RetainedWALBytes                  int64 // < 0: unknown, not exported
	Changes, Transactions, Reconnects uint64
	Connected, Standby                bool
}

// New creates the metrics and registers them, with the Go and process
// collectors.
func New(src Sources) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dzhook_events_total", Help: "Events produced, by type."}, []string{"event"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dzhook_deliveries_total", Help: "Deliveries by subscription and outcome (delivered, failed, retry, gone; recorded as skipped, held, queued in memory, spilled to the journal for want of room)."},
			[]string{"subscription", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dzhook_attempts_total", Help: "HTTP attempts by subscription and status code (0: no response)."}, []string{"subscription", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dzhook_attempt_duration_seconds", Help: "Time of one HTTP attempt, request to end of response.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"subscription"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dzhook_attempt_errors_total", Help: "Failed attempts by subscription and error class (timeout, dns, connect, tls, http, blocked; transform: nothing sent)."},
			[]string{"subscription", "class"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dzhook_subscription_transitions_total", Help: "Subscription state changes this process made after its own attempts, by new state (with several processes, each counts its own; a state adopted from another is not counted)."}, []string{"subscription", "to"}),
		flushes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "dzhook_journal_batch_seconds", Help: "Time to write one journal batch.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dzhook_journal_write_errors_total", Help: "Journal batches that failed (and were retried)."}),
		rejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dzhook_rejections_total", Help: "Outbox rows, messages and row events that could not become events (dzhook.rejections says why)."}),
		stalled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dzhook_stream_stalled", Help: "1 while the replication stream waits at a change it cannot turn into events, by reason (mapping: the mapping does not fit the table)."},
			[]string{"reason"}),
		unstreamed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dzhook_mapped_tables_unstreamed", Help: "Mapped tables whose changes are not streamed: dropped, renamed or out of the publication."}),
	}
	m.stalled.WithLabelValues("mapping").Set(0)
	r.MustRegister(m.events, m.deliveries, m.attempts, m.duration, m.errors, m.transitions, m.flushes, m.flushErrors, m.rejections, m.stalled, m.unstreamed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &scraped{src: src, m: m})
	return m
}

// EventDispatched implements fanout.Observer.
func (m *Metrics) EventDispatched(eventType string, _ int) {
	counter(&m.byType, eventType, m.events, eventType).Inc()
}

// DeliveryRecorded implements fanout.Observer.
func (m *Metrics) DeliveryRecorded(subscription string, state journal.State) {
	outcome := string(state)
	if state == journal.Pending {
		outcome = "queued"
	}
	counter(&m.sub(subscription).outcomes, outcome, m.deliveries, subscription, outcome).Inc()
}

// AttemptFinished implements fanout.Observer.
func (m *Metrics) AttemptFinished(subscription string, took time.Duration, status int, class string, outcome fanout.Outcome) {
	ss := m.sub(subscription)
	code, ok := ss.codes.Load(status) // the label made only on a miss
	if !ok {
		code = counter(&ss.codes, status, m.attempts, subscription, strconv.Itoa(status))
	}
	code.(prometheus.Counter).Inc()
	ss.duration.Observe(took.Seconds())
	if class != "" {
		m.errors.WithLabelValues(subscription, class).Inc() // known through ss
	}
	o := outcome.String()
	counter(&ss.outcomes, o, m.deliveries, subscription, o).Inc()
}

// Unsent implements fanout.Observer: an error and an outcome, no HTTP
// attempt (a failed transform's 0 s pulled the latency's quantiles
// down, and its status 0 counted as an attempt's code).
func (m *Metrics) Unsent(subscription, class string, outcome fanout.Outcome) {
	ss := m.sub(subscription)
	m.errors.WithLabelValues(subscription, class).Inc()
	o := outcome.String()
	counter(&ss.outcomes, o, m.deliveries, subscription, o).Inc()
}

// StateChanged implements fanout.Observer.
func (m *Metrics) StateChanged(subscription string, _, to journal.Health) {
	m.changed.Store(subscription, struct{}{}) // for forgetGone
	m.transitions.WithLabelValues(subscription, string(to)).Inc()
}

// forgetGone deletes the series of the subscriptions this process no
// longer runs (deleted, or removed from config.yaml by a reload): they
// were exported until the process restarted, a histogram and counters
// for every subscription ever created through the API.
func (m *Metrics) forgetGone(running map[string]bool) {
	forget := func(k, _ any) bool {
		id := k.(string)
		if running[id] {
			return true
		}
		m.bySub.Delete(id)
		m.changed.Delete(id)
		l := prometheus.Labels{"subscription": id}
		for _, vec := range []interface {
			DeletePartialMatch(prometheus.Labels) int
		}{m.deliveries, m.attempts, m.duration, m.errors, m.transitions} {
			vec.DeletePartialMatch(l)
		}
		return true
	}
	m.bySub.Range(forget)
	m.changed.Range(forget)
}

// JournalFlushed observes a journal batch (journal.WriterConfig.OnFlush).
func (m *Metrics) JournalFlushed(_ int, took time.Duration, err error) {
	m.flushes.Observe(took.Seconds())
	if err != nil {
		m.flushErrors.Inc()
	}
}

// SetStalled says whether the stream waits at a change, for reason.
func (m *Metrics) SetStalled(reason string, stalled bool) {
	m.stalled.WithLabelValues(reason).Set(b2f(stalled))
}

// SetUnstreamedTables sets how many mapped tables are not streamed.
func (m *Metrics) SetUnstreamedTables(n int) { m.unstreamed.Set(float64(n)) }

// Rejected counts a rejected outbox row or message.
func (m *Metrics) Rejected() { m.rejections.Inc() }

// scraped reads the stream and the subscriptions at scrape time; the
// journal's backlog is cached for a few seconds so frequent scrapes cost
// the database little.
type scraped struct {
	src Sources
	m   *Metrics

	mu         sync.Mutex
	at         time.Time
	refreshing bool
	backlog    map[string]journal.Backlog
}

var (
	descReceived    = prometheus.NewDesc("dzhook_replication_received_lsn", "End of the last WAL received.", nil, nil)
	descDurable     = prometheus.NewDesc("dzhook_replication_durable_lsn", "Position reported to PostgreSQL as flushed: everything before it is journaled.", nil, nil)
	descLag         = prometheus.NewDesc("dzhook_replication_lag_bytes", "pg_current_wal_lsn() - confirmed_flush_lsn of the slot.", nil, nil)
	descRetained    = prometheus.NewDesc("dzhook_replication_retained_wal_bytes", "pg_current_wal_lsn() - restart_lsn of the slot: WAL the database keeps on disk for dzhook.", nil, nil)
	descChanges     = prometheus.NewDesc("dzhook_replication_changes_total", "Row changes received.", nil, nil)
	descTx          = prometheus.NewDesc("dzhook_replication_transactions_total", "Transactions received.", nil, nil)
	descReconnects  = prometheus.NewDesc("dzhook_replication_reconnects_total", "Replication sessions that streamed and were lost, a new one to follow (a standby's tries for the slot are not counted).", nil, nil)
	descConnected   = prometheus.NewDesc("dzhook_replication_connected", "1 while streaming.", nil, nil)
	descStandby     = prometheus.NewDesc("dzhook_replication_standby", "1 while another process holds the slot.", nil, nil)
	descQueue       = prometheus.NewDesc("dzhook_queue_depth", "Deliveries in a subscription's in-memory queue.", []string{"subscription"}, nil)
	descPending     = prometheus.NewDesc("dzhook_pending_deliveries", "Deliveries waiting in the journal, by state (pending, failed, held).", []string{"subscription", "state"}, nil)
	descOldest      = prometheus.NewDesc("dzhook_oldest_pending_seconds", "Age of the oldest due pending delivery.", []string{"subscription"}, nil)
	descSubState    = prometheus.NewDesc("dzhook_subscription_state", "1 for the subscription's current state.", []string{"subscription", "state"}, nil)
	descSubPaused   = prometheus.NewDesc("dzhook_subscription_paused", "1 while paused.", []string{"subscription"}, nil)
	descSubActive   = prometheus.NewDesc("dzhook_subscription_active", "1 while the subscription is active (its configuration's active: an inactive one's deliveries wait, or are skipped, on purpose).", []string{"subscription"}, nil)
	descBeat        = prometheus.NewDesc("dzhook_heartbeat_timestamp_seconds", "Unix time of this process's last heartbeat in the journal (absent before the first): time() minus it is how long other processes have not heard from it.", nil, nil)
	descInstances   = prometheus.NewDesc("dzhook_journal_instances", "dzhook processes alive on the journal at the last heartbeat, this one included.", nil, nil)
	descFailing     = prometheus.NewDesc("dzhook_journal_write_failing_seconds", "How long the journal has refused the batch being written (0 while writes go through): nothing is journaled or acknowledged meanwhile, though the stream may look connected between tries.", nil, nil)
	descBlocked     = prometheus.NewDesc("dzhook_ordered_blocked_keys", "Ordering keys whose head delivery waits for a retry, holding back the later deliveries of its key (0 without ordering).", []string{"subscription"}, nil)
	backlogInterval = 5 * time.Second
)

func (s *scraped) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descDurable, descLag, descRetained, descChanges, descTx, descReconnects, descConnected,
		descStandby, descBeat, descInstances, descFailing, descQueue, descPending, descOldest, descSubState, descSubPaused, descSubActive, descBlocked} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (s *scraped) Collect(ch chan<- prometheus.Metric) {
	if s.src.Stream != nil {
		st := s.src.Stream()
		ch <- prometheus.MustNewConstMetric(descReceived, prometheus.GaugeValue, float64(st.ReceivedLSN))
		ch <- prometheus.MustNewConstMetric(descDurable, prometheus.GaugeValue, float64(st.FlushedLSN))
		if st.LagBytes >= 0 {
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(st.LagBytes))
		}
		if st.RetainedWALBytes >= 0 {
			ch <- prometheus.MustNewConstMetric(descRetained, prometheus.GaugeValue, float64(st.RetainedWALBytes))
		}
		ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(st.Changes))
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(st.Transactions))
		ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(st.Reconnects))
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(st.Connected))
		ch <- prometheus.MustNewConstMetric(descStandby, prometheus.GaugeValue, b2f(st.Standby))
	}
	if s.src.Heartbeat != nil {
		if last, peers := s.src.Heartbeat(); !last.IsZero() {
			ch <- prometheus.MustNewConstMetric(descBeat, prometheus.GaugeValue, float64(last.UnixNano())/1e9)
			ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(1+peers))
		}
	}
	if s.src.JournalFailingSince != nil {
		failing := 0.0
		if since := s.src.JournalFailingSince(); !since.IsZero() {
			failing = max(time.Since(since).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(descFailing, prometheus.GaugeValue, failing)
	}
	var subs []fanout.SubscriptionStatus
	if s.src.Subscriptions != nil {
		subs = s.src.Subscriptions()
		running := make(map[string]bool, len(subs))
		for _, sub := range subs {
			running[sub.ID] = true
		}
		s.m.forgetGone(running)
	}
	backlog := s.backlogs()
	now := time.Now()
	for _, sub := range subs {
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(sub.QueueDepth), sub.ID)
		for _, st := range journal.Healths {
			ch <- prometheus.MustNewConstMetric(descSubState, prometheus.GaugeValue, b2f(sub.State == st), sub.ID, string(st))
		}
		ch <- prometheus.MustNewConstMetric(descSubPaused, prometheus.GaugeValue, b2f(sub.Paused), sub.ID)
		ch <- prometheus.MustNewConstMetric(descSubActive, prometheus.GaugeValue, b2f(sub.Active), sub.ID)
		b := backlog[sub.ID]
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(b.Pending), sub.ID, string(journal.Pending))
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(b.Failed), sub.ID, string(journal.Failed))
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(b.Held), sub.ID, string(journal.Held))
		age := 0.0
		if !b.OldestPending.IsZero() && b.OldestPending.Before(now) {
			age = now.Sub(b.OldestPending).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, age, sub.ID)
		ch <- prometheus.MustNewConstMetric(descBlocked, prometheus.GaugeValue, float64(b.BlockedKeys), sub.ID)
	}
}

func (s *scraped) backlogs() map[string]journal.Backlog {
	s.mu.Lock()
	if s.src.Backlogs == nil || s.refreshing || time.Since(s.at) < backlogInterval {
		b := s.backlog
		s.mu.Unlock()
		return b
	}
	// One scrape refreshes, without the lock: the others answer at once
	// with the last counts, even while the journal does not answer.
	s.refreshing = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, err := s.src.Backlogs(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshing = false
	// A failure is tried again after the same interval, not at every scrape.
	s.at = time.Now()
	if err != nil {
		if s.src.Logger != nil {
			s.src.Logger.Warn("metrics: counting the journal's backlog failed", "err", err)
		}
		return s.backlog
	}
	s.backlog = b
	return b
}
