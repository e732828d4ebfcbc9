-- dzhook journal, version 11: a delivery's own body.
--
-- A subscription with a transform (a CEL expression, or a preset such as
-- format: slack) sends a body of its own, computed once, at the
-- delivery's first attempt, and kept here: every retry sends the same
-- bytes and the signature covers them; the history shows both the event
-- and what was sent. NULL: the delivery sends its event's body
-- (events.body), as every delivery did before this version. A nullable
-- column without a default: adding it rewrites nothing.
ALTER TABLE {{schema}}.deliveries ADD COLUMN body bytea;
