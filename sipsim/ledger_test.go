package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func ledgerLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		for _, k := range []string{"ts", "call_id", "event"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("line without %s: %q", k, line)
			}
		}
		out = append(out, m)
	}
	return out
}

func TestACallWritesItsStoryAndOneCallEnded(t *testing.T) {
	var buf bytes.Buffer
	r := newCallRecord(NewLedgerWriter(&buf), "SCL_test", "outbound")
	r.scenario, r.room, r.identity, r.trunkID = "busy", "room1", "callee", "ST_x"
	r.quirks = []string{}
	r.started()
	r.joined("PA_1")
	r.status("dialing")
	r.sipResponse(180, "Ringing", "callee")
	r.status("ringing")
	r.sipResponse(486, "Busy Here", "callee")
	r.setFinalCode(486)
	r.hangupBy(EndedByCallee, nil)
	r.left("USER_REJECTED", "USER_REJECTED", false, nil)
	r.end(EndedByCallee)
	r.end(EndedByServer) // a second end writes nothing

	lines := ledgerLines(t, &buf)
	var ended []map[string]any
	for _, l := range lines {
		if l["event"] == "call_ended" {
			ended = append(ended, l)
		}
	}
	if len(ended) != 1 {
		t.Fatalf("want one call_ended, got %d", len(ended))
	}
	e := ended[0]
	if e["sip_status_code"].(float64) != 486 || e["answered"].(bool) || e["ended_by"] != "callee" ||
		e["leave_reason"] != "USER_REJECTED" || e["participant_sid"] != "PA_1" || e["t_answer"] != nil {
		t.Errorf("call_ended %v", e)
	}
	st := e["statuses"].([]any)
	if len(st) != 2 || st[0] != "dialing" || st[1] != "ringing" {
		t.Errorf("statuses %v", st)
	}
	if e["t_ringing"] == nil || e["t_start"] == nil || e["t_end"] == nil {
		t.Errorf("times %v", e)
	}
	if lines[0]["event"] != "call_started" || lines[0]["wait_until_answered"] != false {
		t.Errorf("first line %v", lines[0])
	}
}

func TestACallWithoutAFinalCodeHasANullCode(t *testing.T) {
	var buf bytes.Buffer
	r := newCallRecord(NewLedgerWriter(&buf), "SCL_t2", "outbound")
	r.end(EndedByTimeout)
	e := ledgerLines(t, &buf)[0]
	if e["sip_status_code"] != nil || e["statuses"] == nil || e["ended_by"] != "timeout" {
		t.Errorf("call_ended %v", e)
	}
}
