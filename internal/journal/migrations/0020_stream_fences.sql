-- dzhook journal, version 20: every recent rewind fences, not the last
-- alone.
--
-- Version 19 kept one rewind (rewound_timeline, rewound_at): a second
-- rewind replaced the first. A process still reading the oldest timeline
-- (the first old primary, left up behind a partition) then passed the
-- fence between the first fork and the second, and journaled the dead
-- branch's events with the ids the live timeline's transactions there
-- take. Each rewind now appends to rewinds_timeline and rewinds_at (the
-- last 16 kept), and stream_fences refuses a batch that reaches the fork
-- of any of them on an older timeline. The version 19 columns still hold
-- the last rewind, for a process of that version during an upgrade.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN rewinds_timeline integer[], ADD COLUMN rewinds_at bigint[];

UPDATE {{schema}}.checkpoints SET rewinds_timeline = ARRAY[rewound_timeline], rewinds_at = ARRAY[rewound_at]
	WHERE rewound_at IS NOT NULL;

CREATE FUNCTION {{schema}}.stream_fences(rewinds_timeline integer[], rewinds_at bigint[], read_on integer, read_to bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	FOR i IN 1 .. coalesce(array_length(rewinds_at, 1), 0) LOOP
		IF rewinds_timeline[i] > read_on AND read_to >= rewinds_at[i] THEN
			RAISE EXCEPTION 'the checkpoint was moved back to %/% on timeline %, this process read to %/% on timeline %',
				upper(to_hex(rewinds_at[i] >> 32)), upper(to_hex(rewinds_at[i] & 4294967295)), rewinds_timeline[i],
				upper(to_hex(read_to >> 32)), upper(to_hex(read_to & 4294967295)), read_on
				USING ERRCODE = 'DZ001';
		END IF;
	END LOOP;
	RETURN 0;
END
$$;
