package journal

// State is a delivery's state, as the deliveries table keeps it (its
// CHECK constraint lists the same values).
type State string

// Delivery states; see the package documentation for their transitions.
const (
	// Pending: due at next_attempt_at, or being attempted by its owner.
	Pending State = "pending"
	// Delivered: a 2xx was received.
	Delivered State = "delivered"
	// Failed: a final 4xx, or the schedule's last attempt failed.
	Failed State = "failed"
	// Skipped: the subscription was inactive and does not queue.
	Skipped State = "skipped"
	// Held: the subscription was inactive or paused and queues; resume
	// makes it pending.
	Held State = "held"
	// Cancelled: its subscription was deleted before it was attempted
	// (last_error says so); never attempted.
	Cancelled State = "cancelled"
)

// States lists every delivery state.
var States = []State{Pending, Delivered, Failed, Skipped, Held, Cancelled}

// Valid reports whether s is a delivery state.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// Trigger says why an attempt was made (the attempts table's trigger).
type Trigger string

// Attempt triggers.
const (
	// TriggerAuto: the first attempt or one of the retry schedule.
	TriggerAuto Trigger = "auto"
	// TriggerManual: an operator's retry (one attempt, no new schedule).
	TriggerManual Trigger = "manual"
	// TriggerTest: an operator's test send of a sample event.
	TriggerTest Trigger = "test"
)

// Health is a subscription's state (the subscriptions table's state).
type Health string

// Subscription health states.
const (
	// Healthy: its deliveries succeed (or have not yet used up a schedule).
	Healthy Health = "healthy"
	// Failing: a delivery used up its schedule; until the next 2xx.
	Failing Health = "failing"
	// Disabled: the receiver answered 410 Gone; until resumed.
	Disabled Health = "disabled"
)

// Healths lists every subscription health state.
var Healths = []Health{Healthy, Failing, Disabled}
