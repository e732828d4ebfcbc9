-- The reference DZDESK schema (DESIGN.md §3). DZDESK's real schema is not
-- public; dzhook's default mapping fits this one, and any other schema is
-- served through the mapping section of config.yaml.
--
-- requests, users and request_slas use REPLICA IDENTITY FULL so that
-- updates stream their old values (previous status, previous assignee,
-- active flag, previous SLA target). `dzhook setup` sets it too.

CREATE TABLE IF NOT EXISTS users (
    id          bigserial PRIMARY KEY,
    email       text UNIQUE,
    name        text,
    role        text NOT NULL DEFAULT 'agent',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS requests (
    id              bigserial PRIMARY KEY,
    title           text NOT NULL,
    description     text,
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'in_progress', 'pending', 'resolved', 'closed')),
    priority        text NOT NULL DEFAULT 'medium'
                    CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    requester_id    bigint NOT NULL REFERENCES users (id),
    assigned_to_id  bigint REFERENCES users (id),
    updated_by_id   bigint REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS comments (
    id          bigserial PRIMARY KEY,
    request_id  bigint NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    author_id   bigint NOT NULL REFERENCES users (id),
    body        text NOT NULL,
    internal    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS request_slas (
    id            bigserial PRIMARY KEY,
    request_id    bigint NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    sla_type      text NOT NULL CHECK (sla_type IN ('response', 'resolution')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    target_at     timestamptz NOT NULL,
    completed_at  timestamptz,
    UNIQUE (request_id, sla_type)
);

-- The SLA clock asks for the open SLAs due next; this index answers it
-- without a scan of the whole table.
CREATE INDEX IF NOT EXISTS request_slas_open_target ON request_slas (target_at) WHERE completed_at IS NULL;

CREATE INDEX IF NOT EXISTS requests_requester ON requests (requester_id);
CREATE INDEX IF NOT EXISTS requests_assigned_to ON requests (assigned_to_id);
CREATE INDEX IF NOT EXISTS comments_request ON comments (request_id);

ALTER TABLE users REPLICA IDENTITY FULL;
ALTER TABLE requests REPLICA IDENTITY FULL;
ALTER TABLE request_slas REPLICA IDENTITY FULL;

-- The outbox: applications insert (event, payload) rows, dzhook turns each
-- into an event; the row may be deleted in the same transaction. key is
-- optional: the entity the event is about (e.g. 'ord_9'), the ordering key
-- of per-entity delivery; NULL or '' is unordered. Outbox tables without
-- the column work as before.
CREATE TABLE IF NOT EXISTS dzhook_outbox (
    id          bigserial PRIMARY KEY,
    event       text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    key         text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
