-- dzhook journal, version 8: subscriptions managed through the admin API,
-- the audit trail of changes to subscriptions, and cancelled deliveries.
--
-- A runtime subscription's fields are in spec (JSON, every field but the
-- secrets); its secrets are sealed (AES-256-GCM, internal/secretbox) under
-- secrets.key. rev increases on every change, deletes included (a
-- deleted row is kept, with deleted_at), so every process polls
-- max(rev) and reloads when it moves.
CREATE SEQUENCE {{schema}}.runtime_rev;
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
-- kept in the history, with the reason, and never attempted. NOT VALID
-- then VALIDATE: the check of existing rows does not lock out writes.
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check;
ALTER TABLE {{schema}}.deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'skipped', 'held', 'cancelled')) NOT VALID;
ALTER TABLE {{schema}}.deliveries VALIDATE CONSTRAINT deliveries_state_check;
