-- dzhook journal, version 12: ordered deliveries parked behind their key's
-- head.
--
-- The claim takes an ordered delivery only when it is its key's head, and
-- asked every due delivery behind a head waiting for its retry, on every
-- poll, in every process: 200,000 of them behind one head made each claim
-- round take 220 ms, for every subscription. Store.Park moves such a
-- delivery's due time to its head's next attempt (it cannot go before
-- then) and names the head here; the claim no longer sees it. When the
-- head is finished (Store.Unpark) or cancelled (a replay's cancel), the
-- deliveries parked behind it are due again. NULL: not parked. A nullable
-- column without a default: adding it rewrites nothing; the index holds
-- parked rows only.
ALTER TABLE {{schema}}.deliveries ADD COLUMN parked_behind text COLLATE "C";
CREATE INDEX deliveries_parked ON {{schema}}.deliveries (parked_behind) WHERE parked_behind IS NOT NULL;
