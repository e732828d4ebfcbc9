package engine

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/admin"
	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/beat"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/secretbox"
)

// Runtime subscriptions are created, changed and deleted through the
// admin API and kept in the journal (runtime_subscriptions), so every
// process on the journal runs the same set. Each process polls the
// table's revision every runtimePoll and, when it moved, reloads its
// subscriptions: config.yaml's and the journal's. Polling rather than
// LISTEN/NOTIFY: one indexed max() a second costs nothing, needs no
// connection held open (pgbouncer in transaction mode cannot LISTEN), and
// a missed notification cannot leave a process behind; a change through
// this process applies here at once, elsewhere within runtimePoll (the
// issue asks for 2 s).
const runtimePoll = time.Second

// runtimeSpec is a runtime subscription's fields but its secret, URL and
// headers (sealed: a header or a URL's query often carries a credential;
// the spec keeps the URL as fanout.RedactURL shows it, for reading).
type runtimeSpec struct {
	URL                string   `json:"url"`
	Events             []string `json:"events"`
	Active             bool     `json:"active"`
	QueueWhileInactive bool     `json:"queue_while_inactive"`
	Filter             string   `json:"filter,omitempty"`
	StandardWebhooks   bool     `json:"standard_webhooks"`
	Ordering           string   `json:"ordering"`
	Transform          string   `json:"transform,omitempty"`
	Format             string   `json:"format,omitempty"`
	Method             string   `json:"method,omitempty"`
	RateLimit          string   `json:"rate_limit,omitempty"`
	Traceparent        bool     `json:"traceparent,omitempty"`
	Description        string   `json:"description,omitempty"`
}

// sealedPart is what is encrypted at rest. Retired is only in the
// previous secret's part: in its sealed value rather than a column of its
// own, so that no migration is needed and a process of an earlier version
// sharing the journal still reads the part (unknown JSON keys are
// ignored), signing with the previous secret as it did.
type sealedPart struct {
	Secret  string            `json:"secret"`
	URL     string            `json:"url,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Retired []string          `json:"retired,omitempty"`
}

// runtimeSub is a runtime subscription as this process holds it.
type runtimeSub struct {
	rev                     int64 // the row's revision, for changes that read then write
	cfg                     config.Subscription
	description             string
	previous                string
	previousUntil, switchAt time.Time
	// retired are the secrets replaced by rotations made during an
	// earlier one's overlap, newest first, valid (webhook-signature
	// only) until previousUntil as well: see keptSecrets.
	retired []string
	// stale: a value it needs is sealed with a key that no longer seals
	// (see reseal).
	stale bool
}

// runtime is the engine's runtime subscriptions.
type runtime struct {
	ring *secretbox.Ring
	// mu serialises applying a set of subscriptions (a poll, a change
	// through the API, a config reload) and guards the fields below.
	mu      sync.Mutex
	subs    map[string]runtimeSub
	order   []string
	rev     int64
	cfgSubs []config.Subscription // config.yaml's, as last loaded
	cfg     *config.Config        // the configuration started with (delivery settings validate with it)
	known   map[string]bool       // runtime ids this process ran, to cancel on delete
	kept    map[string]runtimeSub // read before, unreadable now (see keep)
}

func newRuntime(cfg *config.Config) (*runtime, error) {
	ring, err := secretbox.New(cfg.Secrets.All())
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	return &runtime{ring: ring, subs: map[string]runtimeSub{}, cfgSubs: cfg.Subscriptions, cfg: cfg, known: map[string]bool{}}, nil
}

// load reads the runtime subscriptions from the journal. A row that does
// not open (a key missing from secrets.keys) is an error when strict (at
// start); otherwise it is left out, reported through skip, so that one
// row does not stop every other change from applying.
func (r *runtime) load(ctx context.Context, store *journal.Store, strict bool, skip func(id string, err error)) (map[string]runtimeSub, []string, []string, int64, error) {
	rows, deleted, rev, err := store.RuntimeSubscriptions(ctx)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	subs := make(map[string]runtimeSub, len(rows))
	order := make([]string, 0, len(rows))
	for _, row := range rows {
		s, err := r.decode(row)
		if err != nil {
			err = fmt.Errorf("runtime subscription %s: %w", row.ID, err)
			if strict {
				return nil, nil, nil, 0, err
			}
			skip(row.ID, err)
			continue
		}
		subs[row.ID] = s
		order = append(order, row.ID)
	}
	return subs, order, deleted, rev, nil
}

func (r *runtime) decode(row journal.RuntimeSubscription) (runtimeSub, error) {
	var spec runtimeSpec
	if err := json.Unmarshal(row.Spec, &spec); err != nil {
		return runtimeSub{}, fmt.Errorf("spec: %w", err)
	}
	plain, err := r.ring.Open(row.Secret, []byte(row.ID))
	if err != nil {
		return runtimeSub{}, err
	}
	var sp sealedPart
	if err := json.Unmarshal(plain, &sp); err != nil {
		return runtimeSub{}, errors.New("sealed part: not JSON")
	}
	s := runtimeSub{description: spec.Description, rev: row.Rev, stale: !r.ring.SealedWithCurrent(row.Secret)}
	if sp.URL != "" {
		spec.URL = sp.URL
	}
	s.cfg = config.Subscription{
		ID: row.ID, URL: spec.URL, Events: spec.Events, Secret: config.Secret(sp.Secret), Active: spec.Active,
		QueueWhileInactive: spec.QueueWhileInactive, Filter: spec.Filter, StandardWebhooks: spec.StandardWebhooks, Ordering: spec.Ordering,
		Transform: spec.Transform, Format: spec.Format, Method: spec.Method, RateLimit: spec.RateLimit,
		Traceparent: spec.Traceparent,
	}
	// Specs stored before these fields existed have none: the defaults.
	if s.cfg.Format == "" {
		s.cfg.Format = config.DefaultSubscription().Format
	}
	if s.cfg.Method == "" {
		s.cfg.Method = config.DefaultSubscription().Method
	}
	if len(sp.Headers) > 0 {
		s.cfg.Headers = make(map[string]config.Secret, len(sp.Headers))
		for k, v := range sp.Headers {
			s.cfg.Headers[k] = config.Secret(v)
		}
	}
	// A previous secret whose overlap ended is not opened: its key may be
	// gone from the ring already.
	if row.PreviousSecret != "" && row.PreviousUntil != nil && time.Now().Before(*row.PreviousUntil) {
		prev, err := r.ring.Open(row.PreviousSecret, []byte(row.ID))
		if err != nil {
			return runtimeSub{}, fmt.Errorf("previous secret: %w", err)
		}
		var pp sealedPart
		if json.Unmarshal(prev, &pp) == nil {
			s.previous, s.previousUntil, s.retired = pp.Secret, *row.PreviousUntil, pp.Retired
			s.stale = s.stale || !r.ring.SealedWithCurrent(row.PreviousSecret)
			if row.SwitchAt != nil {
				s.switchAt = *row.SwitchAt
			}
		}
	}
	return s, nil
}

// conflicts names the ids defined in both config.yaml and the journal.
func conflicts(cfgSubs []config.Subscription, subs map[string]runtimeSub) error {
	var msgs []string
	for _, c := range cfgSubs {
		if _, ok := subs[c.ID]; ok {
			msgs = append(msgs, fmt.Sprintf("subscription %q is defined in config.yaml and was also created through the API (kept in the journal): ids are unique across both; rename or remove the one in config.yaml, or delete the runtime one (DELETE /v1/subscriptions/%s) first", c.ID, c.ID))
		}
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// set returns the subscriptions to run: config.yaml's, then the runtime
// ones in creation order.
func (r *runtime) set(cfgSubs []config.Subscription, subs map[string]runtimeSub, order []string) []fanout.Subscription {
	out := make([]fanout.Subscription, 0, len(cfgSubs)+len(order))
	for _, c := range cfgSubs {
		s := Subscription(c)
		s.Source = "config"
		out = append(out, s)
	}
	for _, id := range order {
		rs := subs[id]
		s := Subscription(rs.cfg)
		s.Source, s.Description = "runtime", rs.description
		if rs.previous != "" {
			s.PreviousSecret, s.PreviousUntil, s.SwitchAt = []byte(rs.previous), rs.previousUntil, rs.switchAt
			for _, r := range rs.retired {
				s.RetiredSecrets = append(s.RetiredSecrets, []byte(r))
			}
		}
		out = append(out, s)
	}
	return out
}

// startRuntime loads the runtime subscriptions at start: New runs the
// dispatcher with them and config.yaml's.
func (e *Engine) startRuntime(ctx context.Context) ([]fanout.Subscription, error) {
	rt, err := newRuntime(e.cfg)
	if err != nil {
		return nil, err
	}
	e.runtime = rt
	subs, order, _, rev, err := rt.load(ctx, e.journal, true, nil)
	if err != nil {
		return nil, err
	}
	if e.reseal(ctx, subs, order) > 0 {
		if subs, order, _, rev, err = rt.load(ctx, e.journal, true, nil); err != nil {
			return nil, err
		}
	}
	if err := conflicts(e.cfg.Subscriptions, subs); err != nil {
		return nil, err
	}
	rt.subs, rt.order, rt.rev = subs, order, rev
	for _, id := range order {
		rt.known[id] = true
	}
	return rt.set(e.cfg.Subscriptions, subs, order), nil
}

// reseal writes again, sealed with the key that seals now (secrets.key
// when set, else the first of secrets.keys), the runtime subscriptions
// whose secret, URL and headers (or a previous secret still in its
// overlap) were sealed with another key: a key rotation ends with the old
// key unused, so it can be dropped. The keys change only with a restart,
// so this runs at start. A row that fails stays as it was (it still
// opens) and is logged; the next start tries again. It returns how many
// rows it wrote.
func (e *Engine) reseal(ctx context.Context, subs map[string]runtimeSub, order []string) int {
	rt := e.runtime
	written, left := 0, 0
	for _, id := range order {
		s := subs[id]
		if !s.stale {
			continue
		}
		err := func() error {
			sealed, err := rt.seal(id, sealedPart{Secret: s.cfg.Secret.Reveal(), URL: s.cfg.URL, Headers: headersOf(s.cfg)})
			if err != nil {
				return err
			}
			prev := ""
			if s.previous != "" {
				if prev, err = rt.seal(id, sealedPart{Secret: s.previous, Retired: s.retired}); err != nil {
					return err
				}
			}
			return e.journal.ResealRuntime(ctx, id, s.rev, sealed, prev,
				journal.AuditRow{Action: "reseal", Subscription: id, Fields: []string{"secret"}, Client: "dzhook"})
		}()
		switch {
		case err == nil:
			written++
		case errors.Is(err, journal.ErrNoSubscription):
			// Deleted meanwhile.
		case errors.Is(err, journal.ErrChanged):
			// Changed meanwhile: another process starting with the same
			// keys resealed it, or a change sealed it anew, with that
			// process's first key, which may not be this one's.
			left++
		default:
			left++
			e.log.Warn("runtime subscription not sealed again with the current secrets key; the key it was sealed with must stay in secrets.keys", "subscription", id, "err", err)
		}
	}
	// Name the key that encrypts by its setting as well as its id: which
	// one encrypts (secrets.key before secrets.keys) is what an operator
	// rotating keys must get right.
	sealing := e.cfg.Secrets.Sealing()
	if written > 0 {
		e.log.Info("runtime subscriptions sealed again with the secrets key that encrypts, "+sealing,
			"subscriptions", written, "key_setting", sealing, "key", rt.ring.KeyID())
	}
	if left > 0 {
		e.log.Info("some runtime subscriptions may still be sealed with another secrets key: keep every key until a start says all are sealed with "+sealing,
			"subscriptions", left, "key_setting", sealing, "key", rt.ring.KeyID())
	} else if len(e.cfg.Secrets.All()) > 1 {
		e.log.Info("every runtime subscription is sealed with "+sealing+", the key that encrypts: the other keys can be removed from secrets.keys once every process runs with this one",
			"key_setting", sealing, "key", rt.ring.KeyID())
	}
	return written
}

// pollRuntime applies changes made through other processes until ctx ends.
func (e *Engine) pollRuntime(ctx context.Context) error {
	t := beat.NewTicker(runtimePoll) // on the instants of the other pollers
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n%sweepEvery == sweepEvery-1 {
			e.sweepDeleted(ctx)
			if n, err := e.journal.SweepCancelledReplays(ctx, e.staleAfter()); err == nil && n > 0 {
				e.log.Info("cancelled deliveries that cancelled replays left waiting", "cancelled", n)
			}
		}
		rev, err := e.journal.RuntimeRev(ctx)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Debug("runtime subscriptions: revision not read", "err", err)
			}
			continue
		}
		e.runtime.mu.Lock()
		stale := rev != e.runtime.rev
		e.runtime.mu.Unlock()
		if stale {
			if err := e.syncRuntime(ctx, nil); err != nil && ctx.Err() == nil {
				e.log.Error("runtime subscriptions not applied; the running set stays", "err", err)
			}
		}
	}
}

// sweepEvery is how many polls apart the sweep of deleted subscriptions'
// deliveries runs.
const sweepEvery = 30

// staleAfter is how old a heartbeat says its process is gone.
func (e *Engine) staleAfter() time.Duration {
	return 3 * cmp.Or(e.opts.Heartbeat, e.cfg.Journal.Heartbeat)
}

// sweepDeleted cancels what deleted subscriptions left pending or held
// and no live process holds: deliveries of a process that crashed, or
// that a cancel after a delete could not reach (the journal was away).
func (e *Engine) sweepDeleted(ctx context.Context) {
	ids, err := e.journal.DeletedRuntime(ctx)
	if err != nil {
		return
	}
	for _, id := range ids {
		if e.dispatcher.HasSubscription(id) {
			continue // re-created since
		}
		if n, err := e.journal.CancelDeliveries(ctx, id, e.staleAfter()); err == nil && n > 0 {
			e.log.Info("cancelled deliveries of a deleted subscription", "subscription", id, "cancelled", n)
		}
	}
}

// syncRuntime reads the runtime subscriptions and applies them with
// config.yaml's (next, when a reload brings a new file; else the one in
// force). A conflict of ids refuses the whole set.
func (e *Engine) syncRuntime(ctx context.Context, next *config.Config) error {
	rt := e.runtime
	rt.mu.Lock()
	defer rt.mu.Unlock()
	subs, order, deleted, rev, err := rt.load(ctx, e.journal, false, func(id string, err error) {
		if prev, ok := rt.subs[id]; ok {
			e.log.Error("runtime subscription cannot be read; it keeps running as last read", "subscription", id, "err", err)
			rt.keep(id, prev)
		} else {
			e.log.Error("runtime subscription cannot be read; it does not run here", "subscription", id, "err", err)
		}
	})
	if err == nil {
		subs, order = rt.withKept(subs, order)
	}
	if err != nil {
		if next == nil {
			return err
		}
		// A reload of the file does not wait for the journal: the runtime
		// subscriptions as last read stay, and the poll catches up.
		e.log.Warn("configuration reload: the runtime subscriptions could not be read; those last read stay", "err", err)
		subs, order, deleted, rev = rt.subs, rt.order, nil, rt.rev
	}
	cfgSubs := rt.cfgSubs
	if next != nil {
		cfgSubs = next.Subscriptions
	}
	if err := conflicts(cfgSubs, subs); err != nil {
		if next != nil {
			return err // a file that reuses a runtime id is refused
		}
		// This process's config.yaml has an id another process created
		// at runtime: the runtime one does not run here; every other
		// change still applies.
		e.log.Error("runtime subscription not run here", "err", err)
		for _, c := range cfgSubs {
			if _, ok := subs[c.ID]; ok {
				delete(subs, c.ID)
				order = slices.DeleteFunc(order, func(id string) bool { return id == c.ID })
			}
		}
	}
	if err := e.dispatcher.Reload(ctx, rt.set(cfgSubs, subs, order)); err != nil {
		return err
	}
	rt.subs, rt.order, rt.rev, rt.cfgSubs = subs, order, rev, cfgSubs
	// A deleted subscription's deliveries this process let go of (its
	// queue given back, attempts in flight finished and journaled) are
	// cancelled: the deletion cancelled what no process held.
	for _, id := range deleted {
		if !rt.known[id] {
			continue
		}
		if err := e.writer.Barrier(ctx); err != nil {
			return err
		}
		if _, err := e.journal.CancelDeliveries(ctx, id, e.staleAfter()); err != nil {
			return err // known stays: the next sync tries again (and the sweep)
		}
		delete(rt.known, id)
	}
	for _, id := range order {
		rt.known[id] = true
	}
	return nil
}

// Manager is the admin API's access to the runtime subscriptions.
func (e *Engine) Manager() admin.Manager { return managerOf{e} }

type managerOf struct{ e *Engine }

var _ admin.Manager = managerOf{}

// fieldsOf names the fields a request sets, for the audit trail (names,
// never values).
func fieldsOf(in api.SubscriptionInput) []string {
	var f []string
	add := func(set bool, name string) {
		if set {
			f = append(f, name)
		}
	}
	add(in.ID != nil, "id")
	add(in.URL != nil, "url")
	add(in.Events != nil, "events")
	add(in.Secret != nil, "secret")
	add(in.Active != nil, "active")
	add(in.QueueWhileInactive != nil, "queue_while_inactive")
	add(in.Filter != nil, "filter")
	add(in.Headers != nil, "headers")
	add(in.StandardWebhooks != nil, "standard_webhooks")
	add(in.Ordering != nil, "ordering")
	add(in.Transform != nil, "transform")
	add(in.Format != nil, "format")
	add(in.Method != nil, "method")
	add(in.RateLimit != nil, "rate_limit")
	add(in.Traceparent != nil, "traceparent")
	add(in.Description != nil, "description")
	return f
}

// apply lays the request's fields over s.
func apply(s *config.Subscription, desc *string, in api.SubscriptionInput) {
	if in.URL != nil {
		s.URL = *in.URL
	}
	if in.Events != nil {
		s.Events = *in.Events
	}
	if in.Active != nil {
		s.Active = *in.Active
	}
	if in.QueueWhileInactive != nil {
		s.QueueWhileInactive = *in.QueueWhileInactive
	}
	if in.Filter != nil {
		s.Filter = *in.Filter
	}
	if in.Headers != nil {
		s.Headers = make(map[string]config.Secret, len(*in.Headers))
		for k, v := range *in.Headers {
			s.Headers[k] = config.Secret(v)
		}
	}
	if in.StandardWebhooks != nil {
		s.StandardWebhooks = *in.StandardWebhooks
	}
	if in.Ordering != nil {
		s.Ordering = *in.Ordering
	}
	if in.Transform != nil {
		s.Transform = *in.Transform
	}
	if in.Format != nil {
		s.Format = *in.Format
	}
	if in.Method != nil {
		s.Method = strings.ToUpper(*in.Method)
	}
	if in.RateLimit != nil {
		s.RateLimit = *in.RateLimit
	}
	if in.Traceparent != nil {
		s.Traceparent = *in.Traceparent
	}
	if in.Description != nil {
		*desc = *in.Description
	}
}

// problemsOf turns the configuration's problems into the API's.
func problemsOf(ps config.Problems) *admin.ValidationError {
	v := &admin.ValidationError{}
	for _, p := range ps {
		v.Problems = append(v.Problems, api.FieldProblem{Field: p.Path, Problem: p.Message})
	}
	return v
}

// maxDescription is the longest description, in characters (runes).
const maxDescription = 500

// newSecret is a generated secret: 32 random bytes, in the whsec_ form
// Standard Webhooks libraries take, or base64 for X-DZDESK-Signature.
func newSecret(standard bool) string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	if standard {
		return "whsec_" + base64.StdEncoding.EncodeToString(b[:])
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// newID is a generated subscription id: wh_ and 12 random characters.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "wh_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))[:12]
}

// CanCreate implements admin.Manager.
func (m managerOf) CanCreate() error {
	if !m.e.runtime.ring.CanSeal() {
		return m.noKey()
	}
	return nil
}

func (m managerOf) noKey() error {
	return &admin.ConflictError{Message: "subscriptions cannot be created through the API without a key to encrypt their secrets: set secrets.key in the configuration to 32 random bytes in base64 (openssl rand -base64 32; e.g. key: ${file:/run/secrets/dzhook-key}) and restart dzhook"}
}

func (m managerOf) configSourced(id string) error {
	file := m.e.opts.ConfigFile
	if file == "" {
		file = "the configuration file"
	}
	return &admin.ConflictError{Message: fmt.Sprintf("subscription %q is defined in %s (config.yaml): change or delete it there; the API changes only subscriptions created through it", id, file)}
}

func (m managerOf) isConfig(id string) bool {
	m.e.runtime.mu.Lock()
	defer m.e.runtime.mu.Unlock()
	return slices.ContainsFunc(m.e.runtime.cfgSubs, func(c config.Subscription) bool { return c.ID == id })
}

func (m managerOf) status(id string) (api.Subscription, error) {
	for _, st := range m.e.dispatcher.Subscriptions() {
		if st.ID == id {
			return admin.SubscriptionOf(st), nil
		}
	}
	return api.Subscription{}, admin.ErrNotFound
}

func (m managerOf) seal(id string, sp sealedPart) (string, error) { return m.e.runtime.seal(id, sp) }

func (r *runtime) seal(id string, sp sealedPart) (string, error) {
	b, err := json.Marshal(sp)
	if err != nil {
		return "", err
	}
	return r.ring.Seal(b, []byte(id))
}

func specOf(s config.Subscription, desc string) ([]byte, error) {
	return json.Marshal(runtimeSpec{URL: fanout.ShownURL(s.URL, s.Format, s.Transform), Events: s.Events, Active: s.Active, QueueWhileInactive: s.QueueWhileInactive,
		Filter: s.Filter, StandardWebhooks: s.StandardWebhooks, Ordering: s.Ordering, Description: desc,
		Transform: s.Transform, Format: s.Format, Method: s.Method, RateLimit: s.RateLimit, Traceparent: s.Traceparent})
}

func headersOf(s config.Subscription) map[string]string {
	if len(s.Headers) == 0 {
		return nil
	}
	h := make(map[string]string, len(s.Headers))
	for k, v := range s.Headers {
		h[k] = v.Reveal()
	}
	return h
}

// validate checks s, with description desc, made from the request in.
func (m managerOf) validate(s config.Subscription, desc string, in api.SubscriptionInput) error {
	m.e.runtime.mu.Lock()
	cfg := m.e.runtime.cfg
	m.e.runtime.mu.Unlock()
	ps := cfg.ValidateSubscription(s)
	if in.URL == nil {
		// A change that gives no url does not answer for the stored one,
		// which checks made since it was stored may refuse (a hidden
		// form saved by the dashboard's old Edit bug, an address the
		// egress guard refuses): pausing it, or giving the whole URL,
		// must stay possible.
		ps = slices.DeleteFunc(ps, func(p config.Problem) bool { return p.Path == "url" })
	}
	if in.Headers == nil {
		// Likewise the stored headers: one refused since it was stored
		// (Connection, say) blocked every change, the dashboard's pause
		// included (found by a review).
		ps = slices.DeleteFunc(ps, func(p config.Problem) bool { return strings.HasPrefix(p.Path, "headers.") })
	}
	if in.Secret == nil && in.StandardWebhooks == nil {
		// And the stored secret: a whsec_ key an older dzhook accepted
		// (its 16 characters counted the prefix) blocked every change
		// after the upgrade, the pause included; a rotation replaces it
		// (found by a review).
		ps = slices.DeleteFunc(ps, func(p config.Problem) bool { return p.Path == "secret" })
	}
	if n := utf8.RuneCountInString(desc); n > maxDescription {
		ps = append(ps, config.Problem{Path: "description", Message: fmt.Sprintf("at most %d characters, not %d", maxDescription, n)})
	}
	if in.Secret != nil {
		ps = emptySecretProblem(ps, *in.Secret)
		if msg := secretProblem(*in.Secret); msg != "" && !slices.ContainsFunc(ps, func(q config.Problem) bool { return q.Path == "secret" }) {
			ps = append(ps, config.Problem{Path: "secret", Message: msg})
		}
	}
	for _, p := range textProblems(in) {
		// A field the configuration's checks refused already (a header
		// value with a NUL, say) keeps their message.
		if !slices.ContainsFunc(ps, func(q config.Problem) bool { return q.Path == p.Path }) {
			ps = append(ps, p)
		}
	}
	if len(ps) > 0 {
		return problemsOf(ps)
	}
	return nil
}

// emptySecret is the API's problem with a secret given as "" where the
// subscription needs one.
const emptySecret = "must not be empty; leave it out to have one generated"

// emptySecretProblem puts emptySecret in place of the configuration's
// problem with an empty secret (given is the request's): that one tells
// how to write a config file ("use ${NAME} …"), meaningless in a JSON
// body. An empty secret the configuration takes (a Slack, Teams or
// Discord format's: none) stays taken.
func emptySecretProblem(ps config.Problems, given string) config.Problems {
	if given != "" {
		return ps
	}
	for i, p := range ps {
		if p.Path == "secret" {
			ps[i].Message = emptySecret
		}
	}
	return ps
}

// secretProblem says why a secret given through the API is refused, or
// "". A control character (a NUL, a line break, a tab) is a paste gone
// wrong that a receiver would not copy back the same. The message never
// quotes the secret.
func secretProblem(secret string) string {
	switch {
	case !utf8.ValidString(secret):
		return "is not valid UTF-8"
	case strings.ContainsFunc(secret, unicode.IsControl):
		return "must not contain control characters (NUL, line breaks, tabs, DEL)"
	}
	return ""
}

// textProblems reports the text of a request that the journal cannot
// keep as given: PostgreSQL's jsonb and text refuse NUL (\u0000), and
// invalid UTF-8 has no JSON form (encoding/json would store U+FFFD in its
// place unnoticed). Every string of the request is checked, named by its
// JSON field, so a field added to api.SubscriptionInput is checked too.
// The messages never quote the text: it may be a secret.
func textProblems(in api.SubscriptionInput) []config.Problem {
	var ps []config.Problem
	check := func(path, s string) {
		switch {
		case !utf8.ValidString(s):
			ps = append(ps, config.Problem{Path: path, Message: "is not valid UTF-8"})
		case strings.IndexByte(s, 0) >= 0:
			ps = append(ps, config.Problem{Path: path, Message: `must not contain NUL (\u0000)`})
		}
	}
	v := reflect.ValueOf(in)
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() != reflect.Pointer || f.IsNil() {
			continue
		}
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		switch f = f.Elem(); f.Kind() {
		case reflect.String:
			check(name, f.String())
		case reflect.Slice:
			for j := range f.Len() {
				check(fmt.Sprintf("%s[%d]", name, j), f.Index(j).String())
			}
		case reflect.Map:
			keys := f.MapKeys()
			slices.SortFunc(keys, func(a, b reflect.Value) int { return cmp.Compare(a.String(), b.String()) })
			for _, k := range keys {
				if !utf8.ValidString(k.String()) || strings.IndexByte(k.String(), 0) >= 0 {
					// The name is no path to show: name the map.
					check(name, k.String())
					continue
				}
				check(name+"."+k.String(), f.MapIndex(k).String())
			}
		}
	}
	return ps
}

// CreateSubscription implements admin.Manager.
func (m managerOf) CreateSubscription(ctx context.Context, in api.SubscriptionInput, client string) (api.CreatedSubscription, error) {
	e := m.e
	if err := m.CanCreate(); err != nil {
		return api.CreatedSubscription{}, err
	}
	s := config.DefaultSubscription()
	desc := ""
	apply(&s, &desc, in)
	s.ID = newID()
	if in.ID != nil {
		s.ID = *in.ID
	}
	secret := ""
	if in.Secret != nil {
		secret = *in.Secret
	} else {
		secret = newSecret(s.StandardWebhooks)
	}
	s.Secret = config.Secret(secret)
	if err := m.validate(s, desc, in); err != nil {
		return api.CreatedSubscription{}, err
	}
	if m.isConfig(s.ID) {
		return api.CreatedSubscription{}, &admin.ConflictError{Message: fmt.Sprintf("subscription %q is defined in config.yaml: choose another id", s.ID)}
	}
	spec, err := specOf(s, desc)
	if err != nil {
		return api.CreatedSubscription{}, err
	}
	sealed, err := m.seal(s.ID, sealedPart{Secret: secret, URL: s.URL, Headers: headersOf(s)})
	if err != nil {
		return api.CreatedSubscription{}, err
	}
	err = e.journal.CreateRuntime(ctx, journal.RuntimeSubscription{ID: s.ID, Spec: spec, Secret: sealed},
		journal.AuditRow{Action: "create", Subscription: s.ID, Fields: fieldsOf(in), Client: client})
	if errors.Is(err, journal.ErrExists) {
		return api.CreatedSubscription{}, &admin.ConflictError{Message: fmt.Sprintf("a subscription with id %q exists", s.ID)}
	}
	if stopping := (*journal.StillStoppingError)(nil); errors.As(err, &stopping) {
		return api.CreatedSubscription{}, &admin.ConflictError{Message: stopping.Error()}
	}
	if err != nil {
		return api.CreatedSubscription{}, err
	}
	// Stored: from here the answer must carry the secret, shown only
	// now, whatever applying it here does (the poll catches up).
	m.applied(ctx, s.ID)
	st, err := m.status(s.ID)
	if err != nil {
		rate, _ := fanout.ParseRate(s.RateLimit) // validated ("": none)
		st = admin.SubscriptionOf(fanout.SubscriptionStatus{ID: s.ID, URL: fanout.ShownURL(s.URL, s.Format, s.Transform), Events: s.Events, Active: s.Active,
			QueueWhileInactive: s.QueueWhileInactive, Filter: s.Filter, State: journal.Healthy, Ordering: fanout.Ordering(s.Ordering),
			Source: "runtime", Description: desc, Transform: s.Transform, Format: s.Format, Method: s.Method, RateLimit: rate,
			Traceparent: s.Traceparent, StandardWebhooks: s.StandardWebhooks})
	}
	return api.CreatedSubscription{Subscription: st, Secret: secret}, nil
}

// current returns the runtime subscription id as this process holds it.
func (m managerOf) current(id string) (runtimeSub, error) {
	m.e.runtime.mu.Lock()
	rs, ok := m.e.runtime.subs[id]
	m.e.runtime.mu.Unlock()
	if ok {
		return rs, nil
	}
	if m.isConfig(id) {
		return runtimeSub{}, m.configSourced(id)
	}
	return runtimeSub{}, admin.ErrNotFound
}

// UpdateSubscription implements admin.Manager.
func (m managerOf) UpdateSubscription(ctx context.Context, id string, in api.SubscriptionInput, client string) (api.Subscription, error) {
	var ps []api.FieldProblem
	if in.ID != nil && *in.ID != id {
		ps = append(ps, api.FieldProblem{Field: "id", Problem: "cannot be changed: create a new subscription and delete this one"})
	}
	if in.Secret != nil {
		ps = append(ps, api.FieldProblem{Field: "secret", Problem: "is changed by rotation: POST /v1/subscriptions/" + id + "/secret"})
	}
	if len(ps) > 0 {
		return api.Subscription{}, &admin.ValidationError{Problems: ps}
	}
	// A PATCH sets the fields it names: another change written between
	// the read and the write (ErrChanged) is read again and the PATCH
	// applied on top of it, as the client asked, rather than answered 409
	// (a client has no revision to send back: the 409 said "read it again
	// and retry", which gave it nothing to retry with).
	for try := 1; ; try++ {
		err := m.updateOnce(ctx, id, in, client)
		if errors.Is(err, journal.ErrChanged) && try < maxUpdateTries {
			continue
		}
		if err != nil {
			return api.Subscription{}, m.mapErr(id, err)
		}
		break
	}
	m.applied(ctx, id)
	return m.status(id)
}

// maxUpdateTries bounds how often UpdateSubscription reads again after
// another change came first: each round, one of the writers at once
// wins, so n at once need n tries at most.
const maxUpdateTries = 16

// updateOnce reads the runtime subscription id as the journal has it,
// applies in and writes it if no other change came meanwhile (else
// journal.ErrChanged).
func (m managerOf) updateOnce(ctx context.Context, id string, in api.SubscriptionInput, client string) error {
	e := m.e
	if err := e.syncRuntime(ctx, nil); err != nil { // the latest, whoever changed it
		return err
	}
	rs, err := m.current(id)
	if err != nil {
		return err
	}
	s, desc := rs.cfg, rs.description
	apply(&s, &desc, in)
	if err := m.validate(s, desc, in); err != nil {
		if s.StandardWebhooks && !rs.cfg.StandardWebhooks {
			return standardMisfit(id, s.Secret.IsSet(), err)
		}
		return err
	}
	spec, err := specOf(s, desc)
	if err != nil {
		return err
	}
	a := journal.AuditRow{Action: "update", Subscription: id, Fields: fieldsOf(in), Client: client}
	if in.Headers != nil || in.URL != nil {
		// The URL and headers are sealed with the secret: write them all.
		sealed, err := m.seal(id, sealedPart{Secret: s.Secret.Reveal(), URL: s.URL, Headers: headersOf(s)})
		if err != nil {
			return err
		}
		err = e.journal.UpdateRuntimeSealed(ctx, id, rs.rev, spec, sealed, a)
		if err != nil {
			return err
		}
	} else if err := e.journal.UpdateRuntime(ctx, id, rs.rev, spec, a); err != nil {
		return err
	}
	return nil
}

// standardMisfit turns the problems validate found with the stored
// secret, when a PATCH switches standard_webhooks on, into one of
// standard_webhooks that says what to do: the request gave no secret, so
// a problem of "secret" alone would not. Creation holds the secret to the
// same rules (config's checks: a whsec_<base64> secret). Switching off
// needs nothing: X-DZDESK-Signature takes any secret, whsec_ ones too.
//
// The previous secret of an overlap in progress need not fit: it was
// never a Standard Webhooks key, so no receiver verifies webhook-signature
// with it (fanout signs with it too, as a raw key, which harms nothing),
// and X-DZDESK-Signature keeps signing with it until the switch, as the
// rotation promised. Asking it to fit held up the one way to switch over,
// rotate then switch, for the whole overlap (24h by default).
func standardMisfit(id string, hasSecret bool, err error) error {
	var ve *admin.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	out := &admin.ValidationError{}
	for _, p := range ve.Problems {
		if p.Field == "secret" {
			now := "the current secret is not one"
			if !hasSecret { // a Slack, Teams or Discord subscription's
				now = "it has none"
			}
			p = api.FieldProblem{Field: "standard_webhooks", Problem: fmt.Sprintf("needs a whsec_<base64> secret and %s: "+
				`rotate to a whsec_… secret first (POST /v1/subscriptions/%s/secret with {"secret": "whsec_…"}, or dzhook subscriptions rotate-secret %s --secret whsec_…; e.g. whsec_ + the output of openssl rand -base64 32), then switch it on`,
				now, id, id)}
		}
		out.Problems = append(out.Problems, p)
	}
	return out
}

func (m managerOf) mapErr(id string, err error) error {
	if errors.Is(err, journal.ErrChanged) {
		return &admin.ConflictError{Message: fmt.Sprintf("subscription %q was changed by another request meanwhile: read it again and retry", id)}
	}
	if errors.Is(err, journal.ErrNoSubscription) {
		if m.isConfig(id) {
			return m.configSourced(id)
		}
		return admin.ErrNotFound
	}
	return err
}

// DeleteSubscription implements admin.Manager.
func (m managerOf) DeleteSubscription(ctx context.Context, id, client string) (api.Deleted, error) {
	e := m.e
	if m.isConfig(id) {
		return api.Deleted{}, m.configSourced(id)
	}
	n, err := e.journal.DeleteRuntime(ctx, id, journal.AuditRow{Action: "delete", Subscription: id, Client: client})
	if err != nil {
		return api.Deleted{}, m.mapErr(id, err)
	}
	// Stop it here now: its queue goes back to the journal, attempts in
	// flight finish; what that leaves pending is cancelled too (here, or
	// by the sweep).
	m.applied(ctx, id)
	more, err := e.journal.CancelDeliveries(context.WithoutCancel(ctx), id, e.staleAfter())
	if err != nil {
		e.log.Warn("deleted subscription: some deliveries not cancelled yet; the sweep will", "subscription", id, "err", err)
	}
	return api.Deleted{ID: id, Cancelled: n + more}, nil
}

// DefaultOverlap is how long a rotated secret stays valid.
const DefaultOverlap = 24 * time.Hour

// RotateSecret implements admin.Manager.
func (m managerOf) RotateSecret(ctx context.Context, id string, in api.SecretRotation, client string) (api.RotatedSecret, error) {
	e := m.e
	if err := e.syncRuntime(ctx, nil); err != nil {
		return api.RotatedSecret{}, err
	}
	rs, err := m.current(id)
	if err != nil {
		return api.RotatedSecret{}, err
	}
	overlap := DefaultOverlap
	var ps []api.FieldProblem
	if in.Overlap != nil {
		d, ok := admin.ParseSpan(*in.Overlap)
		switch {
		case !ok:
			// Not quoted: it may be a secret pasted into the wrong field.
			ps = append(ps, api.FieldProblem{Field: "overlap", Problem: "is not a duration such as 24h, 90m or 7d"})
		case d < 0 || d > config.MaxSecretOverlap:
			ps = append(ps, api.FieldProblem{Field: "overlap", Problem: "must be between 0s and 720h (30d)"})
		default:
			overlap = d
		}
	}
	activate := "end_of_overlap"
	if in.Activate != nil {
		activate = *in.Activate
		if activate != "now" && activate != "end_of_overlap" {
			ps = append(ps, api.FieldProblem{Field: "activate", Problem: "is not one of now, end_of_overlap"}) // not quoted either
		}
	}
	secret := newSecret(rs.cfg.StandardWebhooks)
	if in.Secret != nil {
		secret = *in.Secret
	}
	next := rs.cfg
	next.Secret = config.Secret(secret)
	if msg := secretProblem(secret); msg != "" {
		ps = append(ps, api.FieldProblem{Field: "secret", Problem: msg})
	} else {
		for _, p := range emptySecretProblem(m.e.runtime.cfg.ValidateSubscription(next), secret) {
			if p.Path == "secret" {
				ps = append(ps, api.FieldProblem{Field: "secret", Problem: p.Message})
			}
		}
	}
	// Compared in constant time, and only for a rotation that would
	// otherwise be made: with another problem in the request, the answer
	// confirmed or refuted a guess of the secret and changed nothing.
	if len(ps) == 0 && sameSecret(secret, rs.cfg.Secret.Reveal()) {
		ps = append(ps, api.FieldProblem{Field: "secret", Problem: "is the current secret"})
	}
	if len(ps) > 0 {
		return api.RotatedSecret{}, &admin.ValidationError{Problems: ps}
	}
	now := time.Now().UTC()
	until, switchAt := now.Add(overlap), now.Add(overlap)
	if activate == "now" {
		switchAt = now
	}
	sealed, err := m.seal(id, sealedPart{Secret: secret, URL: rs.cfg.URL, Headers: headersOf(rs.cfg)})
	if err != nil {
		return api.RotatedSecret{}, err
	}
	previous, retired := keptSecrets(rs, secret, now)
	prev, err := m.seal(id, sealedPart{Secret: previous, Retired: retired})
	if err != nil {
		return api.RotatedSecret{}, err
	}
	if err := e.journal.RotateRuntime(ctx, id, rs.rev, sealed, prev, until, switchAt,
		journal.AuditRow{Action: "rotate", Subscription: id, Fields: []string{"secret"}, Client: client}); err != nil {
		return api.RotatedSecret{}, m.mapErr(id, err)
	}
	m.applied(ctx, id)
	return api.RotatedSecret{Secret: secret, PreviousValidUntil: until, SignatureSwitchAt: switchAt}, nil
}

// MaxRetiredSecrets bounds the secrets a rotation keeps besides the
// previous one: rotations in a row, each during the last one's overlap,
// would otherwise add a signature to webhook-signature each, without end.
// Four covers a receiver that lags several rotations behind; the one a
// fifth drops is the oldest replaced, the least likely still installed.
const MaxRetiredSecrets = 4

// keptSecrets returns the secrets a rotation of rs to secret at now keeps
// valid for its overlap: previous, the one X-DZDESK-Signature signs with
// until the switch, and retired, the others webhook-signature still
// carries, newest first. Outside an overlap previous is the current
// secret and nothing else is kept. During an earlier rotation's overlap
// every secret still valid is kept (a Standard Webhooks receiver holds
// the one it installed last, which may be any of them), and previous is,
// before that rotation's switch, still its previous one (receivers of
// X-DZDESK-Signature verify with it now), not the current one nobody may
// have yet; the current one is then retired.
func keptSecrets(rs runtimeSub, secret string, now time.Time) (previous string, retired []string) {
	current := rs.cfg.Secret.Reveal()
	if rs.previous == "" || !now.Before(rs.previousUntil) {
		return current, nil
	}
	previous, others := current, append([]string{rs.previous}, rs.retired...)
	if now.Before(rs.switchAt) {
		previous, others = rs.previous, append([]string{current}, rs.retired...)
	}
	for _, s := range others {
		// The new secret may be an earlier one issued again: it is the
		// current one now, not a retired one.
		if s == previous || s == secret || slices.Contains(retired, s) {
			continue
		}
		retired = append(retired, s)
	}
	return previous, retired[:min(len(retired), MaxRetiredSecrets)]
}

// Record implements admin.Manager.
func (m managerOf) Record(ctx context.Context, action, subscription, client string, fields []string) error {
	return m.e.journal.Audit(ctx, journal.AuditRow{Action: action, Subscription: subscription, Fields: fields, Client: client})
}

// Audit implements admin.Manager.
func (m managerOf) Audit(ctx context.Context, limit int, cursor string) (api.AuditPage, error) {
	rows, next, err := m.e.journal.AuditTrail(ctx, limit, cursor)
	if err != nil {
		return api.AuditPage{}, err
	}
	page := api.AuditPage{Entries: make([]api.AuditEntry, len(rows)), NextCursor: next}
	for i, r := range rows {
		f := slices.Clone(r.Fields)
		sort.Strings(f)
		page.Entries[i] = api.AuditEntry{ID: r.ID, At: r.At.UTC(), Action: r.Action, Subscription: r.Subscription, Fields: f, Client: r.Client}
	}
	return page, nil
}

// keep and withKept carry a subscription that could not be read this
// time over from the last read (a key removed too early, say).
func (r *runtime) keep(id string, s runtimeSub) {
	if r.kept == nil {
		r.kept = map[string]runtimeSub{}
	}
	r.kept[id] = s
}

func (r *runtime) withKept(subs map[string]runtimeSub, order []string) (map[string]runtimeSub, []string) {
	for id, s := range r.kept {
		if _, ok := subs[id]; !ok {
			subs[id] = s
			order = append(order, id)
		}
	}
	r.kept = nil
	return subs, order
}

// applied applies a change the journal has committed, here and now,
// detached from the request (a client that goes away must not leave it
// half applied); a failure is logged and the poll applies it within a
// second or so.
func (m managerOf) applied(ctx context.Context, id string) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := m.e.syncRuntime(sctx, nil); err != nil {
		m.e.log.Warn("runtime subscription change stored but not applied here yet; the poll retries", "subscription", id, "err", err)
	}
}

// sameSecret compares two secrets in constant time (of their digests:
// their lengths stay hidden too).
func sameSecret(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}
