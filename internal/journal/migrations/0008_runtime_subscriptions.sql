-- dzhook journal, version 8: subscriptions managed through the admin API,
-- the audit trail of changes to subscriptions, and cancelled deliveries.
--
-- A runtime subscription's fields are in spec (JSON, every field but the
-- secrets); its secrets are sealed (AES-256-GCM, internal/secretbox) under
-- secrets.key. rev increases on every change, deletes included (a
-- deleted row is kept, with deleted_at): every change takes the next
-- revision from runtime_meta's one row, in its transaction, so changes
-- commit in revision order (the row lock serialises them), and a
-- process that polls runtime_meta.rev and reloads when it moves misses
-- none (a sequence would let a later revision commit first).
CREATE TABLE {{schema}}.runtime_meta (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    rev  bigint NOT NULL
);
INSERT INTO {{schema}}.runtime_meta (rev) VALUES (0);
CREATE TABLE {{schema}}.runtime_subscriptions (
    id               text COLLATE "C" PRIMARY KEY,
    spec             jsonb NOT NULL,
    secret           text NOT NULL,
    previous_secret  text,
    previous_until   timestamptz,
    switch_at        timestamptz,
    rev              bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

CREATE TABLE {{schema}}.audit (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    action           text NOT NULL,
    subscription_id  text NOT NULL,
    fields           text[],
    client           text NOT NULL DEFAULT ''
);

-- A deleted subscription's pending and held deliveries are cancelled:
-- kept in the history, with the reason, and never attempted. NOT VALID:
-- the existing rows met the narrower check, so they are not scanned
-- again while the migration holds the table; new and changed rows are
-- checked.
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check;
ALTER TABLE {{schema}}.deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'skipped', 'held', 'cancelled')) NOT VALID;
