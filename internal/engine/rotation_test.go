package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/testutil"
	"github.com/dzdesk/dzhook/signer"
)

// verifiesStandard reports which of secrets webhook-signature of r
// verifies with.
func verifiesStandard(t *testing.T, r testutil.Request, secrets map[string]string) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	for name, secret := range secrets {
		key, err := signer.StandardKey(secret)
		if err != nil {
			t.Fatalf("secret %s: %v", name, err)
		}
		got[name] = signer.VerifyStandard(r.Header, r.Body, time.Now(), key) == nil
	}
	return got
}

// TestSecondRotationKeepsTheIssuedSecret: a Standard Webhooks receiver
// holds one secret (the standardwebhooks libraries take one), the one
// issued last. A second rotation (B -> C) during the first's overlap
// (A -> B) keeps B valid as well as A (X-DZDESK-Signature's until the
// switch): webhook-signature verifies with A, B and C. Every earlier
// secret ends with the latest rotation's overlap: after a third rotation
// with a short overlap, only the new secret signs.
func TestSecondRotationKeepsTheIssuedSecret(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	e := start(t, runtimeConfig(t, db))
	ctx := context.Background()
	m := e.Manager()
	created, err := m.CreateSubscription(ctx, api.SubscriptionInput{URL: ptr(rc.URL), Events: ptr([]string{"request.created"}), StandardWebhooks: ptr(true)}, "")
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	second, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	r := rc.Wait(t, 1, 20*time.Second)[0]
	got := verifiesStandard(t, r, map[string]string{"A": created.Secret, "B": first.Secret, "C": second.Secret})
	if !got["A"] || !got["B"] || !got["C"] {
		t.Errorf("webhook-signature after a second rotation during the first's overlap verifies with %v; want A, B and C", got)
	}
	if n := len(strings.Fields(r.Header.Get(signer.HeaderWebhookSignature))); n != 3 {
		t.Errorf("webhook-signature has %d signatures, want 3", n)
	}
	if err := signer.Verify(r.Header.Get(signer.HeaderSignature), r.Body, []byte(created.Secret)); err != nil {
		t.Errorf("X-DZDESK-Signature before the switch is not A's: %v", err)
	}

	third, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Overlap: ptr("2s")}, "")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "the third rotation's overlap over", func() bool {
		for _, st := range e.Dispatcher().Subscriptions() {
			if st.ID == created.ID {
				return st.PreviousUntil.IsZero()
			}
		}
		return false
	})
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (2, 'two', 1)`)
	r = rc.Wait(t, 2, 20*time.Second)[1]
	got = verifiesStandard(t, r, map[string]string{"A": created.Secret, "B": first.Secret, "C": second.Secret, "D": third.Secret})
	if want := map[string]bool{"A": false, "B": false, "C": false, "D": true}; !maps.Equal(got, want) {
		t.Errorf("webhook-signature after the last overlap verifies with %v, want %v", got, want)
	}
}

// TestKeptSecrets: what a rotation keeps valid for its overlap, at most
// MaxRetiredSecrets besides the previous one however many rotations
// follow each other within their overlaps.
func TestKeptSecrets(t *testing.T) {
	now := time.Now()
	during := func(cur, prev string, switched bool, retired ...string) runtimeSub {
		s := runtimeSub{cfg: config.Subscription{Secret: config.Secret(cur)}, previous: prev, previousUntil: now.Add(time.Hour), switchAt: now.Add(time.Hour), retired: retired}
		if switched {
			s.switchAt = now.Add(-time.Minute)
		}
		return s
	}
	ended := during("B", "A", false)
	ended.previousUntil = now.Add(-time.Second)
	for _, tc := range []struct {
		name         string
		rs           runtimeSub
		secret       string
		wantPrevious string
		wantRetired  []string
	}{
		{"no rotation before", runtimeSub{cfg: config.Subscription{Secret: "A"}}, "B", "A", nil},
		{"after the overlap", ended, "C", "B", nil},
		{"during the overlap, before its switch", during("B", "A", false), "C", "A", []string{"B"}},
		{"during the overlap, after its switch", during("B", "A", true), "C", "B", []string{"A"}},
		{"a third rotation within both overlaps", during("C", "A", false, "B"), "D", "A", []string{"C", "B"}},
		{"an earlier secret issued again", during("C", "A", false, "B"), "B", "A", []string{"C"}},
		{"the previous secret issued again", during("B", "A", false), "A", "A", []string{"B"}},
		{"at most MaxRetiredSecrets", during("F", "A", false, "E", "D", "C", "B"), "G", "A", []string{"F", "E", "D", "C"}},
	} {
		previous, retired := keptSecrets(tc.rs, tc.secret, now)
		if previous != tc.wantPrevious || !slices.Equal(retired, tc.wantRetired) {
			t.Errorf("%s: previous %q, retired %q; want %q, %q", tc.name, previous, retired, tc.wantPrevious, tc.wantRetired)
		}
	}
}

// TestKeyRotationResealsTheRetiredSecrets: a secrets key rotation during
// a second secret rotation's overlap seals the retired secrets with the
// new key too: with the old key dropped, webhook-signature still verifies
// with the secret the first rotation issued.
func TestKeyRotationResealsTheRetiredSecrets(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	newKey, keyed := keyedConfigs(t, db)
	ctx := context.Background()
	a, stopA := startStoppable(t, keyed(secretsKey))
	created, err := a.Manager().CreateSubscription(ctx, api.SubscriptionInput{ID: ptr("rot"), URL: ptr(rc.URL), Events: ptr([]string{"request.created"}), StandardWebhooks: ptr(true)}, "")
	if err != nil {
		t.Fatal(err)
	}
	first, err := a.Manager().RotateSecret(ctx, "rot", api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	second, err := a.Manager().RotateSecret(ctx, "rot", api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	stopA()
	_, stopB := startStoppable(t, keyed(newKey+", "+secretsKey))
	stopB()

	start(t, keyed(newKey))
	db.Exec(t, `INSERT INTO requests (id, title, requester_id) VALUES (1, 'one', 1)`)
	r := rc.Wait(t, 1, 20*time.Second)[0]
	got := verifiesStandard(t, r, map[string]string{"A": created.Secret, "B": first.Secret, "C": second.Secret})
	if !got["A"] || !got["B"] || !got["C"] {
		t.Errorf("webhook-signature after the secrets key rotation verifies with %v; want A, B and C", got)
	}
}

// v24Part is sealedPart as journal version 24's dzhook knows it.
type v24Part struct {
	Secret  string            `json:"secret"`
	URL     string            `json:"url,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// TestRotationSharesTheJournalWithVersion24: the retired secrets need no
// migration. A first rotation's previous secret is sealed exactly as a
// dzhook of journal version 24 seals it, so a rotation that one started
// goes on (a second one keeps all three secrets); and what a second
// rotation seals, a dzhook of version 24 sharing the journal opens, and
// signs with the previous secret as before.
func TestRotationSharesTheJournalWithVersion24(t *testing.T) {
	e, created := runtimeSubscriptionOn(t, true)
	ctx := context.Background()
	m := e.Manager()
	previous := func() []byte {
		t.Helper()
		rows, _, _, err := e.journal.RuntimeSubscriptions(ctx)
		if err != nil || len(rows) != 1 {
			t.Fatalf("runtime subscriptions: %d, %v", len(rows), err)
		}
		plain, err := e.runtime.ring.Open(rows[0].PreviousSecret, []byte(created.ID))
		if err != nil {
			t.Fatal(err)
		}
		return plain
	}
	first, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := json.Marshal(v24Part{Secret: created.Secret}); !bytes.Equal(previous(), want) {
		t.Errorf("a first rotation's previous secret is not sealed as version 24 seals it")
	}
	second, err := m.RotateSecret(ctx, created.ID, api.SecretRotation{Overlap: ptr("1h")}, "")
	if err != nil {
		t.Fatal(err)
	}
	var old v24Part
	if err := json.Unmarshal(previous(), &old); err != nil || old.Secret != created.Secret {
		t.Errorf("version 24 reads the second rotation's previous secret as %v; want the first secret", err)
	}
	rs, err := managerOf{e}.current(created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rs.cfg.Secret.Reveal() != second.Secret || rs.previous != created.Secret || !slices.Equal(rs.retired, []string{first.Secret}) {
		t.Errorf("after a second rotation: not current C, previous A and retired B")
	}
}
