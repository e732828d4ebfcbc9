-- dzhook journal, version 1. {{schema}} is replaced by the configured
-- schema (journal.schema, default dzhook).

-- Events: the exact bytes every attempt sends (bytea, never jsonb, which
-- would reorder keys and change the signature).
-- Ids use the C collation: byte order, whatever the database's collation,
-- so a delivery's id range (dlv_ + its event's part + a tag) can be read
-- from the primary key (retention asks whether an event still has
-- deliveries that way) and comparisons are cheap.
CREATE TABLE {{schema}}.events (
    id           text COLLATE "C" PRIMARY KEY,
    type         text NOT NULL,
    body         bytea NOT NULL,
    commit_lsn   bigint,                      -- source transaction; NULL for SLA and test events
    occurred_at  timestamptz NOT NULL,        -- the envelope's timestamp
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Retention deletes by age; rows arrive in time order, so a BRIN index
-- serves it for almost no cost on the hot path.
CREATE INDEX events_created ON {{schema}}.events USING brin (created_at);

-- Deliveries: one per (event, subscription). The id is derived from the
-- pair (dlv_ + the event id's part + a tag of the subscription id), so the
-- primary key is that uniqueness: replaying the stream after a crash
-- inserts nothing twice, without a second unique index on the hot path.
CREATE TABLE {{schema}}.deliveries (
    id               text COLLATE "C" PRIMARY KEY,
    event_id         text COLLATE "C" NOT NULL,
    subscription_id  text COLLATE "C" NOT NULL,
    event_type       text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'skipped', 'held')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,               -- pending: when the next attempt is due
    owner            text,                      -- the dzhook instance attempting it now, if any
    test             boolean NOT NULL DEFAULT false,
    manual           boolean NOT NULL DEFAULT false,   -- the next attempt is a manual retry
    last_status      int,
    last_error       text,
    last_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
-- Due work, per subscription, oldest first.
CREATE INDEX deliveries_due ON {{schema}}.deliveries (subscription_id, next_attempt_at) WHERE state = 'pending';
-- History, newest first, per subscription (the overall history merges the
-- subscriptions' newest rows: one index less on the hot path). Retention
-- uses the BRIN index.
CREATE INDEX deliveries_sub_history ON {{schema}}.deliveries (subscription_id, created_at DESC, id DESC);
CREATE INDEX deliveries_created ON {{schema}}.deliveries USING brin (created_at);
-- Failed and held deliveries are few; these serve retry-failed, resume
-- (oldest first) and the counts of the admin API.
CREATE INDEX deliveries_failed ON {{schema}}.deliveries (subscription_id, created_at) WHERE state = 'failed';
CREATE INDEX deliveries_held ON {{schema}}.deliveries (subscription_id, created_at) WHERE state = 'held';

-- Attempts: every try, with what the receiver answered.
CREATE TABLE {{schema}}.attempts (
    delivery_id    text COLLATE "C" NOT NULL,
    attempt        int NOT NULL,
    at             timestamptz NOT NULL,
    trigger        text NOT NULL CHECK (trigger IN ('auto', 'manual', 'test')),
    status_code    int,
    duration_ms    int NOT NULL,
    response_body  bytea,                       -- up to delivery.response_body_limit, as received
    error_class    text,                        -- timeout, dns, connect, tls, http, blocked
    error          text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Subscription health and pause state, surviving restarts.
CREATE TABLE {{schema}}.subscriptions (
    id                text PRIMARY KEY,
    state             text NOT NULL DEFAULT 'healthy' CHECK (state IN ('healthy', 'failing', 'disabled')),
    paused            boolean NOT NULL DEFAULT false,
    state_changed_at  timestamptz,
    last_success_at   timestamptz,
    last_failure_at   timestamptz,
    last_status       int,
    last_error        text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Checkpoints: every transaction of the slot with a commit LSN up to lsn
-- is journaled; a restarted dzhook skips what the stream sends again.
CREATE TABLE {{schema}}.checkpoints (
    slot        text PRIMARY KEY,
    lsn         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Running dzhook processes; an owner whose heartbeat is stale has died,
-- and its deliveries may be claimed by another.
CREATE TABLE {{schema}}.instances (
    id            text PRIMARY KEY,
    hostname      text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- Notifications to the admin (notify.url), written in the same batch as
-- the state change that causes them and sent by whichever instance claims
-- them, so a crash loses none.
CREATE TABLE {{schema}}.notifications (
    id               bigserial PRIMARY KEY,
    subscription_id  text NOT NULL,
    kind             text NOT NULL,              -- failing, recovered, disabled
    body             bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    last_error       text
);
CREATE INDEX notifications_due ON {{schema}}.notifications (next_attempt_at) WHERE sent_at IS NULL;

-- Outbox rows and messages that could not become events.
CREATE TABLE {{schema}}.rejections (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    reason      text NOT NULL,
    commit_lsn  bigint,
    created_at  timestamptz NOT NULL DEFAULT now()
);
