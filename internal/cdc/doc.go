// Package cdc reads a PostgreSQL logical replication slot (pgoutput,
// protocol version 1, with logical decoding messages) and hands each
// committed change to a Handler, in commit order, as typed values. It
// moves the slot only as far as the handler says its work is durable.
//
// Setup prepares the source database (publication, REPLICA IDENTITY FULL
// where old values are needed, the slot) and can only check instead.
// Stream is the long-running part: New, then Run. The pgoutput decoder
// is this package's own (decode.go says why), values are decoded by type
// (values.go), and relations are described by the stream itself
// (relations.go).
//
// # Goroutines
//
// Run owns three goroutines and waits for all of them before it returns,
// so no Handler call outlives Run:
//
//   - the reader (Run's own goroutine) holds the replication connection:
//     it receives XLogData, copies each WALData (pgconn reuses its
//     buffer), queues it for the processor, answers keepalives and sends
//     every standby status update;
//   - the processor decodes the messages and calls the Handler, one call
//     at a time. Its state lives as long as Run, across reconnections, so
//     it remembers what it has handed over;
//   - the lag poller reads the slot's lag for Stats.
//
// When the processor is idle with nothing queued, the reader processes a
// message itself instead of queueing it (inline.go): the hand-over would
// wake a thread per message at moderate rates. Order holds (it does so
// only when everything before is processed, and reads nothing meanwhile),
// and a guard sends the status updates and carries out Interrupt while
// the handler blocks. In a catch-up the reader queues again, so reading
// and processing run side by side.
//
// The queue between reader and processor is a bounded channel. When the
// handler is slow the queue fills and the reader stops reading: the
// backpressure reaches PostgreSQL, which keeps the WAL. Nothing is
// dropped. While the reader waits it still sends a status update every
// half StatusInterval, so the server does not time the connection out.
//
// # The Handler contract
//
// For each transaction the processor calls HandleChange once per change,
// as the changes arrive (a large transaction is never held whole in
// memory), then HandleCommit once. A non-transactional logical message
// comes as a transaction of its own, with one change. A nil return means
// the handler has taken the change or commit; it does not mean the work
// is durable. Any error stops the stream, and Run returns it.
//
// Durability is said separately, with Stream.Ack(lsn), from any goroutine
// and at any later time: "every transaction whose commit LSN is at most
// lsn is durable". An Ack covers everything before it, so the handler
// acknowledges a transaction only once every earlier one is durable too;
// an LSN below the highest acknowledged is ignored. One Ack may cover
// many transactions, which is how a group commit of the journal
// acknowledges a whole batch.
//
// # The life of a transaction
//
//	                 HandleChange…,              Ack(lsn ≥ commit)
//	received ──────▶ HandleCommit ok ──▶ pending ─────────────────▶ acknowledged
//	(write)                              (handed over)               (flush = apply)
//	   │                                     │
//	   │ connection lost                     │ connection lost: resent by PostgreSQL,
//	   ▼                                     │   skipped by the processor
//	resent; the changes already handed       │ process stopped before the Ack:
//	over are skipped                         ▼   handed over again on the next start
//
// Four things describe the stream (Stats shows received, acked and
// flushed):
//
//   - received: the end of the last WAL data read from the socket. It is
//     reported as the write position, and means nothing more.
//   - pending: transactions handed over (HandleCommit returned nil) and
//     not yet acknowledged, each with its commit LSN and the end of its
//     commit record. A transaction enters pending only once the handler
//     took its commit, so a stopping stream never waits for a commit the
//     handler refused.
//   - acked: the highest LSN given to Ack.
//   - flushed: the end of the commit record of the last acknowledged
//     transaction. advance pops from pending every transaction whose
//     commit LSN is at most acked and moves flushed to its end; a pending
//     transaction stops it, so flushed never passes a transaction that is
//     not durable. Each session starts flushed at the slot's
//     confirmed_flush_lsn, so it never goes back.
//
// Every standby status update sets all three positions explicitly:
// write = max(received, flushed), flush = apply = flushed. Left at zero,
// pglogrepl would copy write into flush and report work that is only
// received as done. Nothing is sent while flushed is still zero. Updates
// go out at least every StatusInterval, within a second of an Ack (not
// more often: the position only bounds how much WAL the server keeps),
// when the server asks for a reply, and while the reader waits on a full
// queue.
//
// # Keepalives and an idle stream
//
// When the publication's tables are quiet, the slot would never move
// while the rest of the database writes WAL, and the server would keep it
// all. So a keepalive's WAL end is reported as flushed when the stream is
// idle: no message received and not yet processed, no transaction open,
// nothing pending. Nothing handed over can lie before that end unacked.
// With Config.PersistIdle the position is first made durable by the
// handler's owner (one call in flight, taken as lost and asked again
// when not acknowledged within 10 s; at most every 10 s unless the
// server asks for a reply) and reported once Ack reaches it less one (a
// commit record can start exactly there: Config.PersistIdle), so that the
// owner knows every position the slot was ever told: a slot found past
// it was not moved by this stream (Config.CheckStart refuses such a gap).
//
// # Reconnection
//
// Run connects once first (the catalog pool, then a check of the slot),
// so a wrong DSN or a missing slot is an error at start. After that each
// session is one replication connection, started at the slot's confirmed
// position. When a session ends with an error Run logs it with the
// attempt and the delay, waits a capped exponential backoff with jitter
// (from MinBackoff doubling to MaxBackoff; a delay between half and all
// of it) and starts another; Stats.Problem says why, in words /readyz may
// show (Reason). Some endings are not retried: a handler error, a
// malformed DSN, a slot of another plugin or database. A slot dropped
// while Run runs is waited for (`dzhook setup` creates it; the owner's
// CheckStart then judges where it starts). Interrupt ends a session from
// outside (the engine does when the journal cannot be written). When
// another process streams from the
// slot, Run waits as a standby (Stats.Standby) and tries again, never
// taking the slot from it.
//
// Each session first asks the server where its WAL stands
// (IDENTIFY_SYSTEM): a server that does not carry on the WAL read so far
// (another cluster, a WAL that ends before what was handed over, a
// timeline that forked before it: a failover to a standby that was
// behind, a restore) is refused for the rest of the process with a
// ServerChangedError, before anything is reported to it (server.go).
// Config.Resume, where a process read to before (the journal's
// checkpoint, judged at start by CheckResume), makes the first session
// judged too.
//
// PostgreSQL resends every transaction after the slot's confirmed
// position, including those handed over and not yet acknowledged. The
// processor skips whole transactions it handed over already, and the
// changes it handed over of a transaction cut short, so within one Run the
// handler sees each change once. Config.OnSession is called at the start
// of each session, before its first change.
//
// # Stopping
//
// When ctx ends, the session does not close the connection at once: it
// keeps it, and with it the slot, until the processor has stopped and
// every pending transaction is acknowledged, or DrainTimeout passes,
// reporting each new flushed position. Then it sends a last status update
// and ends the stream with CopyDone. PostgreSQL thus knows exactly where
// this process stopped, and a standby taking the slot, or the next start,
// does not receive again what was made durable. Transactions still
// unacknowledged when DrainTimeout passes are logged and come again on
// the next start: across restarts the handler sees a transaction at
// least once, and must recognise what it has seen before (dzhook's engine
// does, from its checkpoint in the journal).
package cdc
