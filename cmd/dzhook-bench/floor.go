package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dzdesk/dzhook/internal/rawsock"
	"github.com/dzdesk/dzhook/signer"
)

// The floor of the rates scenario: the least a process can spend per
// event doing this job at a paced rate on this machine. floorClient reads
// a replication slot with pglogrepl and, for each inserted request, signs
// a 600-byte body and POSTs it on one kept connection, the request
// written and the answer read on the loop's own goroutine: no journal, no
// mapping, no retries, no goroutine but the runtime's. Its sockets make
// raw system calls (internal/rawsock), as dzhook's do: with the standard
// calls, the runtime's monitor woke for every event and the floor cost
// 1.2 s per 10,000 events at 500 tx/s, against 0.75 s. dzhook's CPU per
// event beside it, measured in the same run at the same rate, is the
// ratio to read.

// floorArg is the hidden first argument that runs floorClient (the bench
// runs itself as the floor's process, so its CPU is the floor's alone).
const floorArg = "floor-client"

// runFloorClient is the floor process: dsn, slot, url and n from its
// arguments; it prints its CPU seconds once n inserts were delivered.
func runFloorClient(args []string) {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: dzhook-bench floor-client DSN SLOT URL N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(args[3])
	if err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "floor-client: N %q is not a positive count\n", args[3])
		os.Exit(2)
	}
	first, err := floorClient(context.Background(), args[0], args[1], args[2], n)
	if err != nil {
		fmt.Fprintf(os.Stderr, "floor-client: %v\n", err)
		os.Exit(1)
	}
	// From the first event on: start-up and connecting are not per event.
	fmt.Printf("%.6f\n", selfCPU()-first)
}

// selfCPU is the process's CPU seconds so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// floorClient delivers n events and returns its CPU seconds when the
// first one arrived from the stream.
func floorClient(ctx context.Context, dsn, slot, target string, n int) (first float64, err error) {
	u, err := url.Parse(target)
	if err != nil {
		return 0, err
	}
	conn, err := replicate(ctx, dsn, slot)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	hc, err := net.Dial("tcp", u.Host)
	if err != nil {
		return 0, err
	}
	defer hc.Close()
	hc = rawsock.Wrap(hc) // raw socket calls, as dzhook's deliveries make them
	br, bw := bufio.NewReader(hc), bufio.NewWriter(hc)
	pad := strings.Repeat("x", 480)
	secret := []byte(benchSecret)
	idCol := map[uint32]int{} // relation → the id column's index (requests only)
	var last pglogrepl.LSN
	nextStatus := time.Now().Add(time.Second)
	var body bytes.Buffer
	for sent := 0; sent < n; {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, err
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return 0, err
			}
			if ka.ServerWALEnd > last {
				last = ka.ServerWALEnd
			}
			if ka.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			m, err := parseXLogData(cd.Data[1:])
			if err != nil {
				return 0, err
			}
			switch m := m.(type) {
			case *pglogrepl.RelationMessage:
				if m.RelationName == "requests" {
					for i, c := range m.Columns {
						if c.Name == "id" {
							idCol[m.RelationID] = i
						}
					}
				}
			case *pglogrepl.InsertMessage:
				i, ok := idCol[m.RelationID]
				if !ok {
					continue
				}
				if sent == 0 {
					first = selfCPU()
				}
				id := string(m.Tuple.Columns[i].Data)
				body.Reset()
				fmt.Fprintf(&body, `{"id":"whk_%s","event":"request.created","timestamp":%q,"data":{"id":"req_%s","title":"Live request","pad":"%s"}}`,
					id, time.Now().UTC().Format(time.RFC3339Nano), id, pad)
				if err := floorPost(bw, br, u, body.Bytes(), signer.Sign(secret, body.Bytes()), "dlv_floor_"+id); err != nil {
					return 0, err
				}
				sent++
			case *pglogrepl.CommitMessage:
				last = m.TransactionEndLSN
			}
		}
		if time.Now().After(nextStatus) {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: last}); err != nil {
				return 0, err
			}
			nextStatus = time.Now().Add(time.Second)
		}
	}
	return first, nil
}

// floorPost sends one signed POST and reads its answer to the end.
func floorPost(bw *bufio.Writer, br *bufio.Reader, u *url.URL, body []byte, sig, delivery string) error {
	req := &http.Request{Method: http.MethodPost, URL: u, Host: u.Host, ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}, signer.HeaderSignature: {sig}, signer.HeaderDelivery: {delivery}},
		Body:   io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	if err := req.Write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("receiver answered %s", resp.Status)
	}
	return err
}

// floorProc is a running floor client.
type floorProc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	errb bytes.Buffer
}

// startFloor starts the floor's process on slot of dsn, to deliver n
// events to target.
func startFloor(dsn, slot, target string, n int) (*floorProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &floorProc{}
	p.cmd = exec.Command(self, floorArg, dsn, slot, target, strconv.Itoa(n))
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
	return p, p.cmd.Start()
}

// wait waits for the floor's process to deliver everything, up to limit,
// and returns its CPU seconds from the first event to the last.
func (p *floorProc) wait(limit time.Duration) (float64, error) {
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return 0, fmt.Errorf("floor client: %v: %s", err, strings.TrimSpace(p.errb.String()))
		}
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-done
		return 0, errors.New("floor client: did not deliver every event in time")
	}
	return strconv.ParseFloat(strings.TrimSpace(p.out.String()), 64)
}

// kill ends the floor's process and waits for it.
func (p *floorProc) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}
