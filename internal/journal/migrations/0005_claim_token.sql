-- dzhook journal, version 5: claims carry a token.
--
-- A claim of due deliveries is one UPDATE; when its answer is lost with
-- the connection (the UPDATE committed, the client saw an error), the
-- claimed deliveries are owned by a live instance that does not know it
-- has them. The token each claim writes lets that instance give back
-- exactly those deliveries. A nullable column without a default: adding
-- it rewrites nothing.
ALTER TABLE {{schema}}.deliveries ADD COLUMN claim text;
