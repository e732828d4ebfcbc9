-- dzhook journal, version 19: the stream's batches are fenced by the
-- checkpoint's timeline.
--
-- Every batch of what the stream read (events, SLA timers, rejections, a
-- checkpoint) first locks its slot's checkpoint row through this
-- function, which refuses the batch when the checkpoint is on a newer
-- timeline of the same cluster than the one the batch was read on:
-- another process's start moved it back to a failover's fork
-- (RewindCheckpoint), and the old timeline's events past the fork would
-- take the ids of the new timeline's transactions. Taken first, the row
-- lock orders the batch against that move: a batch that locked it
-- first is seen by the move's check, and one after is refused whole.
CREATE FUNCTION {{schema}}.stream_fence(journaled integer, read_on integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	IF journaled > read_on THEN
		RAISE EXCEPTION 'the journal''s checkpoint is on timeline %, this process read timeline %', journaled, read_on
			USING ERRCODE = 'DZ001';
	END IF;
	RETURN journaled;
END
$$;
