-- dzhook journal, version 4: SLA timers carry an arming generation.
--
-- The SLA clock claims a due timer, then checks its SLA in the source
-- database. When the SLA moved or completed, the timer is deleted; but the
-- stream may have armed that same timer again meanwhile (the SLA came
-- back), through an upsert that leaves the row in place. The generation,
-- new at every arming, lets the clock delete only the arming it claimed.
CREATE SEQUENCE {{schema}}.sla_timer_generation;
ALTER TABLE {{schema}}.sla_timers
    ADD COLUMN generation bigint NOT NULL DEFAULT nextval('{{schema}}.sla_timer_generation');
