-- dzhook journal, version 19: a failover's rewind recorded in the
-- checkpoint, and the stream's batches fenced by it.
--
-- A start that moves the checkpoint back to where the server's timeline
-- forked (RewindCheckpoint: a failover to a standby that was behind, with
-- nothing journaled past the fork) records the timeline it moved to and
-- the fork. What any process read past the fork on an older timeline is
-- then the lost branch's: its events would take the ids of the new
-- timeline's transactions. Every batch of what the stream read first
-- locks its slot's checkpoint row through stream_fence, which refuses the
-- batch when it reaches the fork on an older timeline than the rewind's.
-- Taken first, the row lock orders the batch against the rewind: a batch
-- that locked it first is seen by the rewind's check, and one after is
-- refused whole. A failover whose new timeline carries on everything read
-- records nothing, and fences nothing.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN rewound_timeline integer, ADD COLUMN rewound_at bigint;

CREATE FUNCTION {{schema}}.stream_fence(rewound_timeline integer, rewound_at bigint, read_on integer, read_to bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	IF rewound_timeline > read_on AND read_to >= rewound_at THEN
		RAISE EXCEPTION 'the checkpoint was moved back to %/% on timeline %, this process read to %/% on timeline %',
			upper(to_hex(rewound_at >> 32)), upper(to_hex(rewound_at & 4294967295)), rewound_timeline,
			upper(to_hex(read_to >> 32)), upper(to_hex(read_to & 4294967295)), read_on
			USING ERRCODE = 'DZ001';
	END IF;
	RETURN rewound_timeline;
END
$$;
