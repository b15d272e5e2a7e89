package main

// callRecord collects what one call did on the SIP side and writes the
// ledger events as they happen, then exactly one call_ended.

import (
	"sync"
	"time"
)

// Who ended a call (ledger hangup_by / ended_by).
const (
	EndedByCallee  = "callee"  // far end of an outbound call: BYE or a final failure answer
	EndedByCaller  = "caller"  // far end of an inbound call: BYE or CANCEL
	EndedByUs      = "us"      // the LiveKit side: RemoveParticipant, DeleteRoom, max_call_duration
	EndedByTimeout = "timeout" // ringing timeout (no answer, or inbound not picked up)
	EndedByServer  = "server"  // livekit-server dropped the participant, or sipsim shut down
)

type callRecord struct {
	ledger *Ledger

	mu          sync.Mutex
	callID      string
	direction   string
	scenario    string
	quirks      []string
	room        string
	identity    string
	sid         string
	trunkID     string
	from, to    string
	wait        bool
	answered    bool
	sipCode     int
	statuses    []string
	lastStatus  string
	leaveReason string
	seenReason  string
	endedBy     string
	tStart      time.Time
	tRinging    time.Time
	tAnswer     time.Time
	tEnd        time.Time
	ended       bool
}

func newCallRecord(l *Ledger, callID, direction string) *callRecord {
	return &callRecord{ledger: l, callID: callID, direction: direction, tStart: time.Now()}
}

func optTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return unixTime(t)
}

func (r *callRecord) started() {
	r.mu.Lock()
	f := map[string]any{
		"direction":            r.direction,
		"scenario":             r.scenario,
		"quirks":               r.quirks,
		"room":                 r.room,
		"participant_identity": r.identity,
		"trunk_id":             r.trunkID,
		"from":                 r.from,
		"to":                   r.to,
		"wait_until_answered":  r.wait,
	}
	r.mu.Unlock()
	r.ledger.Write(r.callID, "call_started", f)
}

func (r *callRecord) event(name string, fields map[string]any) {
	r.ledger.Write(r.callID, name, fields)
}

func (r *callRecord) joined(sid string) {
	r.mu.Lock()
	r.sid = sid
	r.mu.Unlock()
	r.event("joined", map[string]any{"participant_sid": sid})
}

// status records a sip.callStatus value the simulator set.
func (r *callRecord) status(v string) {
	r.mu.Lock()
	r.statuses = append(r.statuses, v)
	r.lastStatus = v
	if v == "ringing" && r.tRinging.IsZero() {
		r.tRinging = time.Now()
	}
	r.mu.Unlock()
	r.event("status", map[string]any{"value": v})
}

// ringingAt records when the call started ringing on the SIP side even when
// a quirk kept the status from showing it.
func (r *callRecord) ringingAt(t time.Time) {
	r.mu.Lock()
	if r.tRinging.IsZero() {
		r.tRinging = t
	}
	r.mu.Unlock()
}

func (r *callRecord) sipResponse(code int, reason, from string) {
	r.event("sip_response", map[string]any{"code": code, "reason": reason, "from": from})
}

// sipRequest records a SIP request (BYE, CANCEL...) and who sent it.
func (r *callRecord) sipRequest(method, from string) {
	r.event("sip_request", map[string]any{"method": method, "from": from})
}

func (r *callRecord) setFinalCode(code int) {
	r.mu.Lock()
	r.sipCode = code
	r.mu.Unlock()
}

func (r *callRecord) markAnswered() {
	r.mu.Lock()
	r.answered = true
	r.tAnswer = time.Now()
	r.mu.Unlock()
	r.event("answered", nil)
}

func (r *callRecord) isAnswered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.answered
}

func (r *callRecord) hangupBy(who string, extra map[string]any) {
	r.mu.Lock()
	if r.endedBy == "" {
		r.endedBy = who
	}
	r.mu.Unlock()
	f := map[string]any{"by": who}
	for k, v := range extra {
		f[k] = v
	}
	r.event("hangup_by", f)
}

// left records how the participant left: reason is the DisconnectReason name
// sent in the LeaveRequest, "abrupt", or the server's reason when the server
// removed it (byServer). seen is what other participants are expected to see
// with livekit-server 1.13.5 ("" when unknown).
func (r *callRecord) left(reason, seen string, byServer bool, extra map[string]any) {
	r.mu.Lock()
	r.leaveReason = reason
	r.seenReason = seen
	r.mu.Unlock()
	f := map[string]any{"reason": reason, "by_server": byServer}
	if seen != "" {
		f["seen_reason"] = seen
	} else {
		f["seen_reason"] = nil
	}
	for k, v := range extra {
		f[k] = v
	}
	r.event("left", f)
}

func (r *callRecord) apiError(err error) {
	code := sipStatusCodeOf(err)
	var sc any
	if code != 0 {
		sc = code
	}
	r.event("api_error", map[string]any{"code": psrpcCodeOf(err), "sip_status_code": sc, "message": err.Error()})
}

// end writes call_ended once. endedBy fills in if no hangup_by was recorded.
func (r *callRecord) end(endedBy string) {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return
	}
	r.ended = true
	r.tEnd = time.Now()
	if r.endedBy == "" {
		r.endedBy = endedBy
	}
	var code any
	if r.sipCode != 0 {
		code = r.sipCode
	}
	statuses := append([]string{}, r.statuses...)
	var seen any
	if r.seenReason != "" {
		seen = r.seenReason
	}
	var leave any
	if r.leaveReason != "" {
		leave = r.leaveReason
	}
	f := map[string]any{
		"direction":            r.direction,
		"scenario":             r.scenario,
		"quirks":               r.quirks,
		"room":                 r.room,
		"participant_identity": r.identity,
		"participant_sid":      r.sid,
		"trunk_id":             r.trunkID,
		"answered":             r.answered,
		"sip_status_code":      code,
		"statuses":             statuses,
		"leave_reason":         leave,
		"seen_reason":          seen,
		"ended_by":             r.endedBy,
		"t_start":              optTime(r.tStart),
		"t_ringing":            optTime(r.tRinging),
		"t_answer":             optTime(r.tAnswer),
		"t_end":                optTime(r.tEnd),
	}
	r.mu.Unlock()
	r.event("call_ended", f)
}

// snapshot is the GET /calls view of a call in progress.
func (r *callRecord) snapshot() map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return map[string]any{
		"call_id":              r.callID,
		"direction":            r.direction,
		"scenario":             r.scenario,
		"quirks":               r.quirks,
		"room":                 r.room,
		"participant_identity": r.identity,
		"participant_sid":      r.sid,
		"trunk_id":             r.trunkID,
		"from":                 r.from,
		"to":                   r.to,
		"status":               r.lastStatus,
		"answered":             r.answered,
		"t_start":              optTime(r.tStart),
		"t_ringing":            optTime(r.tRinging),
		"t_answer":             optTime(r.tAnswer),
	}
}
