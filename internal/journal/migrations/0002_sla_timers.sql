-- dzhook journal, version 2: the SLA clock's durable timers.
--
-- One row per (SLA row, kind, target): kind is "warning:<percent>" or
-- "breach". Changes of the SLA table arm and cancel timers through the
-- same batches as deliveries (so an armed timer is never lost before its
-- transaction is acknowledged); any dzhook instance fires due timers,
-- leasing them first so two instances never fire the same one.
CREATE TABLE {{schema}}.sla_timers (
    sla_id        text NOT NULL,
    kind          text NOT NULL,
    target_at     timestamptz NOT NULL,
    fire_at       timestamptz NOT NULL,
    request_id    text NOT NULL,
    sla_type      text NOT NULL,
    started_at    timestamptz NOT NULL,
    leased_until  timestamptz,
    fired_at      timestamptz,
    outcome       text,                    -- fired, cancelled
    PRIMARY KEY (sla_id, kind, target_at)
);
CREATE INDEX sla_timers_due ON {{schema}}.sla_timers (fire_at) WHERE fired_at IS NULL;

-- When a slot's pre-existing open SLAs were armed (once, at the first start).
CREATE TABLE {{schema}}.sla_bootstrap (
    slot     text PRIMARY KEY,
    done_at  timestamptz NOT NULL DEFAULT now()
);
