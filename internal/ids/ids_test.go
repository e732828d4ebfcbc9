package ids

import (
	"context"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/jackc/pglogrepl"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The formats, byte for byte: the journal holds ids made by every earlier
// version, and a replay must find them again.
func TestGoldenIDs(t *testing.T) {
	src := NewSource("7301234567890123456")
	for _, tc := range []struct{ name, got, want string }{
		{"stream, start", src.NewID(0, 0, 0), "whk_77swq222222222222222222222"},
		{"stream", src.NewID(0x16B3740, 3, 1), "whk_77swq22222224utrc222222526"},
		{"stream, past 2^31 changes", src.NewID(1<<40, 1<<31+5, 255), "whk_77swq2222622222224222227zw"},
		{"stream, other source", NewSource("1").NewID(0x16B3740, 3, 1), "whk_3mnls22222224utrc222222526"},
		{"timed", src.NewTimedID("sla", "7", "breach", "1705341600000000"), "whk_ruoboa5pq54ee5j3dkzcfapbzw"},
		{"timed, other source", NewSource("1").NewTimedID("sla", "7", "breach", "1705341600000000"), "whk_co2rlmmrk7pm5hu4tszl4d6gso"},
		{"tag", SubscriptionTag("crm"), "mdkwxvsfmujb3"},
		{"tag, other subscription", SubscriptionTag("billing"), "3mewjvb3tshdi"},
		{"delivery", DeliveryID("whk_77swq22222224utrc222222526", "crm"), "dlv_77swq22222224utrc222222526mdkwxvsfmujb3"},
		{"delivery of a timed event", DeliveryID("whk_ruoboa5pq54ee5j3dkzcfapbzw", "billing"), "dlv_ruoboa5pq54ee5j3dkzcfapbzw3mewjvb3tshdi"},
		{"delivery of a test event", DeliveryID("whk_test_00112233445566778899aabb", "crm"), "dlv_test_00112233445566778899aabbmdkwxvsfmujb3"},
		{"replay", NewReplayID(time.UnixMilli(1705341600000))[:12], "rpl_2aakwly3"},
		{"replay delivery", ReplayDeliveryID("whk_77swq22222224utrc222222526", "crm", "rpl_223y2wzf6a2bcdef"), "dlv_77swq22222224utrc222222526mdkwxvsfmujb3_223y2wzf6a2bcdef"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	lo, hi := DeliveryRange("whk_77swq22222224utrc222222526")
	if lo != "dlv_77swq22222224utrc222222526" || hi != "dlv_77swq22222224utrc222222526~" {
		t.Errorf("DeliveryRange = [%s, %s)", lo, hi)
	}
}

var (
	eventShape     = regexp.MustCompile(`^whk_[2-7a-z]{26}$`)
	testEventShape = regexp.MustCompile(`^whk_test_[0-9a-f]{24}$`)
	deliveryShape  = regexp.MustCompile(`^dlv_([2-7a-z]{26}|test_[0-9a-f]{24})[2-7a-z]{13}$`)
	replayShape    = regexp.MustCompile(`^rpl_[2-7a-z]{16}$`)
	replayDlvShape = regexp.MustCompile(`^dlv_[2-7a-z]{26}[2-7a-z]{13}_[2-7a-z]{16}$`)
)

// TestReplayIDs: replay ids have their shape, differ when drawn at the
// same moment, sort by time; a replay's delivery never is the normal
// delivery of the pair, nor another replay's.
func TestReplayIDs(t *testing.T) {
	at := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	a, b, later := NewReplayID(at), NewReplayID(at), NewReplayID(at.Add(time.Millisecond))
	for _, id := range []string{a, b, later} {
		if !replayShape.MatchString(id) {
			t.Errorf("replay id %q has the wrong shape", id)
		}
	}
	if a == b {
		t.Errorf("two replay ids drawn at once are equal: %s", a)
	}
	if later <= a || later <= b {
		t.Errorf("a later replay id %s sorts before %s or %s", later, a, b)
	}
	ev := NewSource("x").NewID(1, 2, 3)
	da, db := ReplayDeliveryID(ev, "crm", a), ReplayDeliveryID(ev, "crm", b)
	if !replayDlvShape.MatchString(da) || da == db || da == DeliveryID(ev, "crm") {
		t.Errorf("replay deliveries %s, %s of %s: want two shapes apart from %s", da, db, ev, DeliveryID(ev, "crm"))
	}
}

func TestShapes(t *testing.T) {
	src := NewSource("x")
	for _, id := range []string{src.NewID(1, 2, 3), src.NewID(^pglogrepl.LSN(0), -1, 7), src.NewTimedID(), src.NewTimedID("a", "b")} {
		if !eventShape.MatchString(id) {
			t.Errorf("event id %q has the wrong shape", id)
		}
		if d := DeliveryID(id, "s"); !deliveryShape.MatchString(d) {
			t.Errorf("delivery id %q has the wrong shape", d)
		}
	}
	a, b := TestEventID(), TestEventID()
	if !testEventShape.MatchString(a) || a == b {
		t.Errorf("test event ids %q, %q: want two different whk_test_ + 24 hex", a, b)
	}
	if d := DeliveryID(a, "s"); !deliveryShape.MatchString(d) {
		t.Errorf("delivery id %q of a test event has the wrong shape", d)
	}
}

// TestSorted: ids of later stream positions sort later, even past 2^24
// changes in one transaction, and so do their deliveries.
func TestSorted(t *testing.T) {
	src := NewSource("7301234567890123456")
	positions := []struct {
		lsn          uint64
		ordinal, idx int
	}{
		{0x16B3740, 0, 0}, {0x16B3740, 0, 1}, {0x16B3740, 0, 255}, {0x16B3740, 1, 0}, {0x16B3740, 1<<24 - 1, 0},
		{0x16B3740, 1 << 24, 0}, {0x16B3740, 1<<24 + 1, 0}, {0x16B3740, 1<<31 + 5, 0}, {0x16B3740, 1<<32 - 1, 0},
		{0x16B3741, 0, 0}, {0x1_0000_0000, 0, 0}, {1<<64 - 1, 0, 0},
	}
	var prev, prevDlv string
	for i, p := range positions {
		id := src.NewID(pglogrepl.LSN(p.lsn), p.ordinal, p.idx)
		// The tag that sorts first after the one that sorts last: the
		// deliveries of a later event still sort after all of an earlier one's.
		first, last := DeliveryID(id, "crm"), DeliveryID(prev, "billing")
		if i > 0 && (id <= prev || first <= last || first <= prevDlv) {
			t.Errorf("id of %+v = %s, not after %s (deliveries %s, %s)", p, id, prev, first, last)
		}
		prev, prevDlv = id, DeliveryID(id, "billing")
	}
	if NewSource("other").NewID(0x16B3740, 0, 0) == src.NewID(0x16B3740, 0, 0) {
		t.Error("two sources give the same id for one position")
	}
}

// rangeEvents are event ids of every kind, neighbours included: ids that
// differ in their last character, a timed id, test ids.
func rangeEvents() []string {
	src := NewSource("7301234567890123456")
	return []string{
		src.NewID(0x16B3740, 0, 0), src.NewID(0x16B3740, 0, 1), src.NewID(0x16B3740, 1, 0), src.NewID(0x16B3741, 0, 0),
		src.NewTimedID("sla", "7", "breach", "1"), src.NewTimedID("sla", "7", "breach", "2"),
		NewSource("1").NewID(0x16B3740, 0, 0),
		"whk_test_00112233445566778899aabb", "whk_test_00112233445566778899aabc",
	}
}

// rangeReplay is the replay of the replay deliveries in the range tests.
const rangeReplay = "rpl_zzzzzzzzzzzzzzzz"

var rangeSubscriptions = []string{"crm", "billing", "a", "", "ops-eu-1", strings.Repeat("z", 200)}

func TestDeliveryRange(t *testing.T) {
	events := rangeEvents()
	for _, ev := range events {
		lo, hi := DeliveryRange(ev)
		for _, other := range events {
			for _, sub := range rangeSubscriptions {
				for _, d := range []string{DeliveryID(other, sub), ReplayDeliveryID(other, sub, rangeReplay)} {
					in := lo <= d && d < hi
					if in != (other == ev) {
						t.Errorf("delivery %s of %s: in the range [%s, %s) of %s = %v", d, other, lo, hi, ev, in)
					}
				}
			}
		}
	}
}

// retentionRange is the range exactly as internal/journal/retention.go
// writes it, ev being the event and x the delivery.
const retentionRange = `x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~'`

// TestDeliveryRangeSQL: PostgreSQL, comparing ids in COLLATE "C" columns
// as the journal does, computes the range DeliveryRange does and finds in
// it the same deliveries.
func TestDeliveryRangeSQL(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t,
		`CREATE TABLE events (id text COLLATE "C" PRIMARY KEY)`,
		`CREATE TABLE deliveries (id text COLLATE "C" PRIMARY KEY, event_id text COLLATE "C" NOT NULL)`)
	conn := db.Connect(t)
	ctx := context.Background()
	events := rangeEvents()
	want := map[string][]string{}
	for _, ev := range events {
		if _, err := conn.Exec(ctx, `INSERT INTO events VALUES ($1)`, ev); err != nil {
			t.Fatal(err)
		}
		for _, sub := range rangeSubscriptions {
			for _, d := range []string{DeliveryID(ev, sub), ReplayDeliveryID(ev, sub, rangeReplay)} {
				if _, err := conn.Exec(ctx, `INSERT INTO deliveries VALUES ($1, $2)`, d, ev); err != nil {
					t.Fatal(err)
				}
				want[ev] = append(want[ev], d)
			}
		}
		sort.Strings(want[ev])
	}
	for _, ev := range events {
		wantLo, wantHi := DeliveryRange(ev)
		var lo, hi string
		if err := conn.QueryRow(ctx, `SELECT 'dlv_' || substr(ev.id, 5), 'dlv_' || substr(ev.id, 5) || '~' FROM events ev WHERE ev.id = $1`, ev).Scan(&lo, &hi); err != nil {
			t.Fatal(err)
		}
		if lo != wantLo || hi != wantHi {
			t.Errorf("%s: SQL range [%s, %s), Go range [%s, %s)", ev, lo, hi, wantLo, wantHi)
		}
		rows, err := conn.Query(ctx, `SELECT x.id, x.event_id FROM events ev JOIN deliveries x ON `+retentionRange+` WHERE ev.id = $1 ORDER BY x.id`, ev)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var id, of string
			if err := rows.Scan(&id, &of); err != nil {
				t.Fatal(err)
			}
			if of != ev {
				t.Errorf("range of %s holds %s, a delivery of %s", ev, id, of)
			}
			got = append(got, id)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, " ") != strings.Join(want[ev], " ") {
			t.Errorf("deliveries of %s in the SQL range:\n got %v\nwant %v", ev, got, want[ev])
		}
	}
	// Byte order, as Go compares strings: the order in which PostgreSQL
	// sorts the ids is the order Go does.
	rows, err := conn.Query(ctx, `SELECT id FROM deliveries ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		all = append(all, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !sort.StringsAreSorted(all) {
		t.Errorf("PostgreSQL's COLLATE \"C\" order differs from Go's: %v", all)
	}
}

// TestIsDeliveryID: what every way of making a delivery id makes is one,
// and nothing else is.
func TestIsDeliveryID(t *testing.T) {
	ev := "whk_" + strings.Repeat("a2", 13)
	for _, id := range []string{
		DeliveryID(ev, "crm"), DeliveryID(TestEventID(), "Crm-Prod"), ReplayDeliveryID(ev, "crm", NewReplayID(time.Now())),
		"dlv_" + strings.Repeat("z", 120),
	} {
		if !IsDeliveryID(id) {
			t.Errorf("IsDeliveryID(%q) = false, want true", id)
		}
	}
	for _, id := range []string{
		"", "dlv_", "dlv", "whk_abc", "dlv_ABC", "dlv_a-b", "dlv_a\x00b", "dlv_\xff\xfe", "dlv_a b", "dlv_" + strings.Repeat("z", 121),
	} {
		if IsDeliveryID(id) {
			t.Errorf("IsDeliveryID(%q) = true, want false", id)
		}
	}
}
