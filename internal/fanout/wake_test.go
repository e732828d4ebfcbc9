package fanout

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/rawsock"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// The ways the idle waiter sleeps: on the bell (more than one
// processor), on ring (one processor: procs.One), and either, chosen
// anew at every sleep (the processor count changed while workers
// waited).
var waitModes = []struct {
	name string
	one  func() bool
}{
	{"bell", func() bool { return false }},
	{"one processor", func() bool { return true }},
	{"switching", func() bool { return rand.IntN(2) == 0 }},
}

// useWaitMode makes the waiter sleep as one says, until the test ends.
func useWaitMode(t *testing.T, one func() bool) {
	testOneProcessor.Store(&one)
	t.Cleanup(func() { testOneProcessor.Store(nil) })
}

// wakeWorkers starts n workers on s as deliverer.start does, with a bell
// when the system has one, each handing its tasks to handle; they end
// when s is retired.
func wakeWorkers(t *testing.T, n int, handle func(*task)) *sub {
	t.Helper()
	s, err := compile(Subscription{ID: "s", URL: "http://127.0.0.1:1/", Events: []string{"*"}, Active: true},
		&Config{QueueSize: 256, Concurrency: n}, func() int64 { return 1 })
	if err != nil {
		t.Fatal(err)
	}
	s.bell = rawsock.NewBell()
	if s.bell == nil {
		t.Log("no bell on this system: the workers wait on the lanes")
	}
	s.workers.Store(int32(n))
	for range n {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.workerDone()
			for t := s.next(); t != nil; t = s.next() {
				handle(t)
				s.release(1)
			}
		}()
	}
	return s
}

func putTask(t *testing.T, s *sub, id string) {
	t.Helper()
	if s.reserve(1) != 1 {
		t.Fatal("the queue is full")
	}
	if !s.put(&task{deliveryID: id}, true) {
		t.Fatal("put refused a task")
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out: %s", what)
	}
}

// TestWorkersWake: whatever the timing, a task put is taken by an idle
// worker, every worker is called when as many tasks come at once, and
// retiring the subscription ends every worker and closes the bell.
func TestWorkersWake(t *testing.T) {
	for _, m := range waitModes {
		t.Run(m.name, func(t *testing.T) {
			useWaitMode(t, m.one)
			testWorkersWake(t)
		})
	}
}

func testWorkersWake(t *testing.T) {
	const workers = 4
	t.Run("one at a time", func(t *testing.T) {
		taken := make(chan struct{})
		s := wakeWorkers(t, workers, func(*task) { taken <- struct{}{} })
		asleep(t, s, workers)
		for i := range 300 {
			putTask(t, s, "d")
			waitFor(t, taken, "a task put while every worker was idle was not taken")
			if i%3 == 0 {
				// Let the worker go back to sleep on the bell, or not
				// (a load pattern, not a wait).
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			}
		}
		retireAndWait(t, s)
	})
	t.Run("as many as the workers at once", func(t *testing.T) {
		var inFlight atomic.Int32
		all := make(chan struct{})
		release := make(chan struct{})
		s := wakeWorkers(t, workers, func(*task) {
			if inFlight.Add(1) == workers {
				close(all)
			}
			<-release
		})
		asleep(t, s, workers)
		for range workers {
			putTask(t, s, "d")
		}
		waitFor(t, all, "not every worker was called for as many tasks as workers")
		close(release)
		retireAndWait(t, s)
	})
	t.Run("from many goroutines", func(t *testing.T) {
		const producers, each = 4, 500
		var done atomic.Int32
		finished := make(chan struct{})
		s := wakeWorkers(t, workers, func(*task) {
			if rand.IntN(8) == 0 {
				time.Sleep(time.Duration(rand.IntN(100)) * time.Microsecond) // an attempt's time
			}
			if done.Add(1) == producers*each {
				close(finished)
			}
		})
		var wg sync.WaitGroup
		for range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					for s.reserve(1) != 1 {
						time.Sleep(50 * time.Microsecond) // the queue is full: the workers empty it
					}
					if !s.put(&task{deliveryID: "d"}, rand.IntN(2) == 0) {
						t.Error("put refused a task")
						return
					}
					if rand.IntN(4) == 0 {
						time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
					}
				}
			}()
		}
		wg.Wait()
		waitFor(t, finished, "tasks put were left waiting")
		retireAndWait(t, s)
	})
}

// retireAndWait retires s and waits for its workers, which close its bell.
func retireAndWait(t *testing.T, s *sub) {
	t.Helper()
	s.retire()
	ended := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(ended)
	}()
	waitFor(t, ended, "workers still running after the subscription was retired")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bell != nil {
		t.Error("the bell is still open after the last worker ended")
	}
}

// asleep waits until s's n workers are idle: one on the bell (or ring),
// the others waiting to be called.
func asleep(t *testing.T, s *sub, n int) {
	t.Helper()
	if s.bell == nil {
		return
	}
	testutil.Eventually(t, 10*time.Second, "the workers idle: one on the bell, the others waiting to be called", func() bool {
		return s.sleeping.Load() && s.idle.Load() == int32(n-1)
	})
}

// TestSpentRingCallsAnotherWorker: the waiter, about to sleep, takes a
// task that came meanwhile; a put that rang for its own task in that
// moment spent the ring on it. Another idle worker must be called for
// that task, not left idle while the waiter runs its attempt.
func TestSpentRingCallsAnotherWorker(t *testing.T) {
	for _, m := range waitModes[:2] {
		t.Run(m.name, func(t *testing.T) {
			useWaitMode(t, m.one)
			testSpentRing(t)
		})
	}
}

func testSpentRing(t *testing.T) {
	holds := map[string]chan struct{}{"hold1": make(chan struct{}), "hold2": make(chan struct{}), "X": make(chan struct{})}
	taken := make(chan string, 8)
	s := wakeWorkers(t, 2, func(tk *task) {
		taken <- tk.deliveryID
		if h := holds[tk.deliveryID]; h != nil {
			<-h
		}
	})
	if s.bell == nil {
		if runtime.GOOS == "linux" {
			t.Fatal("no bell (eventfd) on Linux")
		}
		t.Skip("no bell on this system: workers wait on the lanes")
	}
	asleep(t, s, 2)
	putTask(t, s, "hold1")
	<-taken
	putTask(t, s, "hold2")
	<-taken // both workers busy
	var waiter, took sync.Once
	hook := func(at string) {
		switch at {
		case "waiter": // the first to finish holds the bell's role: X comes before it sleeps
			waiter.Do(func() { putTask(t, s, "X") })
		case "took": // it took X; the other one finishes and waits to be called
			took.Do(func() {
				close(holds["hold2"])
				deadline := time.Now().Add(10 * time.Second)
				for s.idle.Load() != 1 {
					if time.Now().After(deadline) {
						t.Error("the other worker never went idle")
						return
					}
					time.Sleep(time.Millisecond)
				}
				// It counted itself idle; let it get to its wait (if it
				// has not, it finds B itself and the test passes either way).
				time.Sleep(20 * time.Millisecond)
				putTask(t, s, "B") // rings: the waiter's sleeping is still set
			})
		}
	}
	testBellHook.Store(&hook)
	defer testBellHook.Store(nil)
	close(holds["hold1"])
	// X (held by its worker until the end) and B, in either order: the
	// two workers report them side by side.
	got := map[string]bool{}
	deadline := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case id := <-taken:
			got[id] = true
		case <-deadline:
			t.Fatalf("took %v; B waited 5 s with a worker idle (idle %d, waiter %v, sleeping %v, queued %d)",
				got, s.idle.Load(), s.waiter.Load(), s.sleeping.Load(), s.queued())
		}
	}
	if !got["X"] || !got["B"] {
		t.Fatalf("took %v, want X and B", got)
	}
	close(holds["X"])
	retireAndWait(t, s)
}
