-- dzhook journal, version 9: replays.
--
-- A replay re-sends the journaled events of a window to one subscription
-- as new deliveries (Store.StepReplay makes them, a batch at a time, in
-- the events' order). Its row is its progress: the cursor is the last
-- event it looked at, moved in the same transaction as the deliveries it
-- made, so a replay taken up again after a crash neither skips nor
-- repeats an event.
CREATE TABLE {{schema}}.replays (
    id               text COLLATE "C" PRIMARY KEY,
    subscription_id  text COLLATE "C" NOT NULL,
    since            timestamptz NOT NULL,            -- the window, on the events' timestamp: [since, until)
    until            timestamptz NOT NULL,
    patterns         text[] NOT NULL,                 -- the event globs asked for (empty: all of the subscription's)
    types            text[] NOT NULL,                 -- the event types they select, within the subscription's
    state            text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    matched          int NOT NULL,                    -- events of the window and types when it was asked for
    scanned          int NOT NULL DEFAULT 0,          -- events looked at so far
    created          int NOT NULL DEFAULT 0,          -- deliveries made so far (the filter may leave some out)
    cursor_at        timestamptz,                     -- the last event looked at: (occurred_at, id)
    cursor_id        text COLLATE "C",
    requested_by     text NOT NULL DEFAULT '',        -- the admin API client's address
    reason           text,                            -- why it was cancelled or failed
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX replays_subscription ON {{schema}}.replays (subscription_id, created_at DESC);
CREATE INDEX replays_running ON {{schema}}.replays (created_at) WHERE state = 'running';

-- The deliveries a replay made carry its id (NULL: made by the stream or
-- an operator's test), so history shows them as replays and a cancel
-- finds them. Nullable without a default: adding it rewrites nothing.
ALTER TABLE {{schema}}.deliveries ADD COLUMN replay_id text COLLATE "C";
CREATE INDEX deliveries_replay ON {{schema}}.deliveries (replay_id, state) WHERE replay_id IS NOT NULL;

-- A replay reads the events of a window in their order. Without this
-- index every batch would scan the whole events table; with it, a range
-- scan. Events arrive in time order, so it grows at its right end, as the
-- primary key does: a small cost on the hot path's insert.
CREATE INDEX events_occurred ON {{schema}}.events (occurred_at, id);
