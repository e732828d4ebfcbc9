package mapping

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// DefaultPeopleCacheSize bounds the email cache.
const DefaultPeopleCacheSize = 50_000

// UserLookup fetches the emails of users by id (as text), in one batch. It
// returns what it found; ids it does not return are unknown users.
type UserLookup interface {
	LookupEmails(ctx context.Context, ids []string) (map[string]string, error)
}

// people is a bounded LRU cache of user emails, kept fresh by the users
// stream and filled by batched lookups on a miss. A user the lookup does
// not know, or a lookup that fails, gives a null email: never an error or
// a stall (the lookup has a deadline).
type people struct {
	mu     sync.Mutex
	max    int
	ll     *list.List
	items  map[string]*list.Element
	lookup UserLookup
}

type person struct {
	id    string
	email string
	known bool // false: looked up and not found
}

func newPeople(max int, lookup UserLookup) *people {
	if max <= 0 {
		max = DefaultPeopleCacheSize
	}
	return &people{max: max, ll: list.New(), items: make(map[string]*list.Element), lookup: lookup}
}

// put records a user's email, from the users stream.
func (p *people) put(id, email string, known bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.items[id]; ok {
		e.Value = person{id: id, email: email, known: known}
		p.ll.MoveToFront(e)
		return
	}
	p.items[id] = p.ll.PushFront(person{id: id, email: email, known: known})
	for p.ll.Len() > p.max {
		last := p.ll.Back()
		p.ll.Remove(last)
		delete(p.items, last.Value.(person).id)
	}
}

func (p *people) get(id string) (person, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.items[id]
	if !ok {
		return person{}, false
	}
	p.ll.MoveToFront(e)
	return e.Value.(person), true
}

// resolve makes sure every id is in the cache, looking the missing ones up
// in one query. Failed lookups are not cached, so a later event retries.
func (p *people) resolve(ctx context.Context, timeout time.Duration, ids []string) error {
	var missing []string
	for _, id := range ids {
		if id == "" {
			continue
		}
		if _, ok := p.get(id); !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 || p.lookup == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found, err := p.lookup.LookupEmails(ctx, missing)
	if err != nil {
		return err
	}
	for _, id := range missing {
		email, ok := found[id]
		p.put(id, email, ok)
	}
	return nil
}
