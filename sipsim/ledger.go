package main

// The ledger: JSON lines of what the SIP side did, written and flushed one
// line at a time, independently of anything the room shows. It is the ground
// truth tests compare the monitor with.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Ledger writes one JSON object per line.
type Ledger struct {
	mu     sync.Mutex
	w      io.Writer
	f      *os.File
	closed bool
}

// OpenLedger opens (appends to) the ledger file.
func OpenLedger(path string) (*Ledger, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Ledger{w: f, f: f}, nil
}

// NewLedgerWriter is a ledger over any writer (tests).
func NewLedgerWriter(w io.Writer) *Ledger { return &Ledger{w: w} }

// unixNow is the ledger's clock: unix seconds as a float.
func unixNow() float64 { return unixTime(time.Now()) }

func unixTime(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}

// Write appends an event. fields must not contain ts, call_id or event.
func (l *Ledger) Write(callID, event string, fields map[string]any) {
	if l == nil {
		return
	}
	rec := make(map[string]any, len(fields)+3)
	for k, v := range fields {
		rec[k] = v
	}
	rec["ts"] = unixNow()
	rec["call_id"] = callID
	rec["event"] = event
	b, err := json.Marshal(rec)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"ts":%f,"call_id":%q,"event":"ledger_error","error":%q}`, unixNow(), callID, err.Error()))
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	// One write per line: O_APPEND keeps lines whole; the OS file has no
	// user-space buffer, so each line is flushed as it is written.
	_, _ = l.w.Write(b)
}

// Close syncs and closes the file.
func (l *Ledger) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.f != nil {
		_ = l.f.Sync()
		return l.f.Close()
	}
	return nil
}
