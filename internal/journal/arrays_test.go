package journal

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestWriteEncodesEveryColumn reads back each column of the inserts whose
// arrays Write encodes itself (arrays.go): values, and NULL where the
// row's zero value means none, as pgx's encoding had them.
func TestWriteEncodesEveryColumn(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	paris := time.FixedZone("CET", 3600)
	fine := time.Date(2026, 12, 4, 10, 11, 12, 123456789, paris)      // sub-microsecond part dropped
	early := time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC) // before PostgreSQL's epoch
	epoch := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &Batch{
		Events: []EventRow{
			{ID: "whk_1", Type: "request.créé", Body: []byte(`{"t":"日本語"}`), CommitLSN: 0x16B3748, OccurredAt: fine},
			{ID: "whk_2", Type: "sla.warning", Body: []byte{}, OccurredAt: early}, // no commit: NULL
		},
		Deliveries: []DeliveryRow{
			{ID: "dlv_1", EventID: "whk_1", SubscriptionID: "crm", EventType: "request.créé", State: Pending, Attempts: 2,
				NextAttemptAt: fine, Owner: "host-1", Test: true, LastStatus: 503, LastError: "HTTP 503", LastAttemptAt: early,
				CreatedAt: epoch, Ordered: true, OrderingKey: "", Position: -7, Body: []byte("own")},
			{ID: "dlv_2", EventID: "whk_2", SubscriptionID: "crm", EventType: "sla.warning", State: Delivered, Attempts: 1,
				LastAttemptAt: fine, CreatedAt: fine, Body: []byte{}},
			{ID: "dlv_3", EventID: "whk_2", SubscriptionID: "erp", EventType: "sla.warning", State: Held, CreatedAt: early},
		},
		Attempts: []AttemptRow{
			{DeliveryID: "dlv_1", Attempt: 2, At: fine, Trigger: TriggerManual, StatusCode: 503, Duration: 1500 * time.Microsecond,
				ResponseBody: []byte("busy"), ErrorClass: "http", Error: "HTTP 503", Instance: "host-1"},
			{DeliveryID: "dlv_2", Attempt: 1, At: early, Trigger: TriggerAuto, Duration: 0, ResponseBody: []byte{}},
			{DeliveryID: "dlv_3", Attempt: 1, At: epoch, Trigger: TriggerTest},
		},
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	conn := db.Connect(t)
	micro := func(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

	for _, want := range b.Events {
		var typ string
		var body []byte
		var lsn *int64
		var at time.Time
		if err := conn.QueryRow(ctx, `SELECT type, body, commit_lsn, occurred_at FROM dzhook.events WHERE id = $1`, want.ID).Scan(&typ, &body, &lsn, &at); err != nil {
			t.Fatalf("%s: %v", want.ID, err)
		}
		var wantLSN *int64
		if want.CommitLSN != 0 {
			v := int64(want.CommitLSN)
			wantLSN = &v
		}
		if typ != want.Type || !bytes.Equal(body, want.Body) || !equalPtr(lsn, wantLSN) || !at.Equal(micro(want.OccurredAt)) {
			t.Errorf("%s: got %q %q %v %v, want %q %q %v %v", want.ID, typ, body, shown(lsn), at, want.Type, want.Body, shown(wantLSN), micro(want.OccurredAt))
		}
	}

	for _, want := range b.Deliveries {
		var got struct {
			event, sub, typ, state string
			attempts               int
			next, lastAt           *time.Time
			created                time.Time
			owner, lastErr, key    *string
			test                   bool
			status                 *int32
			position               *int64
			body                   []byte
		}
		err := conn.QueryRow(ctx, `SELECT event_id, subscription_id, event_type, state, attempts, next_attempt_at, owner, test,
			last_status, last_error, last_attempt_at, created_at, ordering_key, position, body FROM dzhook.deliveries WHERE id = $1`, want.ID).
			Scan(&got.event, &got.sub, &got.typ, &got.state, &got.attempts, &got.next, &got.owner, &got.test,
				&got.status, &got.lastErr, &got.lastAt, &got.created, &got.key, &got.position, &got.body)
		if err != nil {
			t.Fatalf("%s: %v", want.ID, err)
		}
		var key *string
		var position *int64
		if want.Ordered {
			key, position = &want.OrderingKey, &want.Position
		}
		checks := []struct {
			what string
			ok   bool
		}{
			{"event_id", got.event == want.EventID},
			{"subscription_id", got.sub == want.SubscriptionID},
			{"event_type", got.typ == want.EventType},
			{"state", got.state == string(want.State)},
			{"attempts", got.attempts == want.Attempts},
			{"next_attempt_at", equalTime(got.next, want.NextAttemptAt)},
			{"owner", equalPtr(got.owner, nullText(want.Owner))},
			{"test", got.test == want.Test},
			{"last_status", equalPtr(got.status, nullInt(want.LastStatus))},
			{"last_error", equalPtr(got.lastErr, nullText(want.LastError))},
			{"last_attempt_at", equalTime(got.lastAt, want.LastAttemptAt)},
			{"created_at", got.created.Equal(micro(want.CreatedAt))},
			{"ordering_key", equalPtr(got.key, key)},
			{"position", equalPtr(got.position, position)},
			{"body", bytes.Equal(got.body, want.Body) && (got.body == nil) == (want.Body == nil)},
		}
		for _, c := range checks {
			if !c.ok {
				t.Errorf("%s: %s differs: got %+v, want %+v", want.ID, c.what, got, want)
			}
		}
	}

	for _, want := range b.Attempts {
		var at time.Time
		var trigger string
		var status *int32
		var ms int
		var body []byte
		var class, msg, instance *string
		err := conn.QueryRow(ctx, `SELECT at, trigger, status_code, duration_ms, response_body, error_class, error, instance
			FROM dzhook.attempts WHERE delivery_id = $1 AND attempt = $2`, want.DeliveryID, want.Attempt).
			Scan(&at, &trigger, &status, &ms, &body, &class, &msg, &instance)
		if err != nil {
			t.Fatalf("%s/%d: %v", want.DeliveryID, want.Attempt, err)
		}
		if !at.Equal(micro(want.At)) || trigger != string(want.Trigger) || !equalPtr(status, nullInt(want.StatusCode)) ||
			ms != int(want.Duration.Milliseconds()) || !bytes.Equal(body, want.ResponseBody) || (body == nil) != (want.ResponseBody == nil) ||
			!equalPtr(class, nullText(want.ErrorClass)) || !equalPtr(msg, nullText(want.Error)) || !equalPtr(instance, nullText(want.Instance)) {
			t.Errorf("%s/%d: got %v %s %v %d %q %v %v %v, want %+v", want.DeliveryID, want.Attempt, at, trigger, shown(status), ms, body,
				shown(class), shown(msg), shown(instance), want)
		}
	}
}

// TestWriteAfterAFailedBatch: batches run again the statements
// prepared on their connection; a batch that fails part way (a row
// violating a constraint) writes nothing, and the batch after it is
// written.
func TestWriteAfterAFailedBatch(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	for i := range 3 {
		if err := s.Write(ctx, batchOf(i*10, 10)); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	bad := batchOf(100, 5)
	bad.Attempts[3].Trigger = "cron" // not one of the trigger's values
	if err := s.Write(ctx, bad); err == nil {
		t.Fatal("a batch with an attempt of an unknown trigger was written")
	}
	conn := db.Connect(t)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM dzhook.events WHERE id >= $1`, "whk_00000000000000000000000100").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d events of the failed batch written (err %v): a batch is all or nothing", n, err)
	}
	if err := s.Write(ctx, batchOf(200, 10)); err != nil {
		t.Fatalf("the batch after a failed one: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM dzhook.attempts`).Scan(&n); err != nil || n != 40 {
		t.Errorf("%d attempts (err %v), want 40", n, err)
	}
	var cp Checkpoint
	if cp, _ = s.Checkpoint(ctx, "dzhook"); cp.LSN != pglogrepl.LSN(210) {
		t.Errorf("checkpoint %d, want 210", cp.LSN)
	}
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func equalTime(got *time.Time, want time.Time) bool {
	if want.IsZero() {
		return got == nil
	}
	return got != nil && got.Equal(want.Truncate(time.Microsecond))
}

func shown[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestWriteAfterASchemaChange: a statement prepared before a migration
// changed one of its parameters' types fails once, and the connection
// that held it goes: the next write prepares it again and succeeds (a
// newer process migrating the journal during a rolling update).
func TestWriteAfterASchemaChange(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	notify := func(i int) *Batch {
		return &Batch{Notifications: []NotificationRow{{SubscriptionID: "crm", Kind: "failing", Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}}}
	}
	if err := s.Write(ctx, notify(0)); err != nil {
		t.Fatal(err)
	}
	conn := db.Connect(t)
	if _, err := conn.Exec(ctx, `ALTER TABLE dzhook.notifications ALTER COLUMN body TYPE jsonb USING convert_from(body, 'UTF8')::jsonb`); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for i := 1; i <= 4; i++ {
		if err := s.Write(ctx, notify(i)); err != nil {
			failed++
			t.Logf("write %d after the migration: %v", i, err)
		}
	}
	if failed > 1 {
		t.Errorf("%d of 4 writes failed after the migration, want at most the first", failed)
	}
}
