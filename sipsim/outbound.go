package main

// Outbound calls: CreateSIPParticipant from livekit-server. The SIP
// participant joins with "dialing", publishes its track, "sends the INVITE"
// and plays the far end chosen by the dialed number, setting sip.callStatus
// and leaving as livekit-sip does (pkg/sip/outbound.go, traces a to j).

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/rpc"
	"github.com/livekit/protocol/utils/guid"
	"github.com/livekit/psrpc"
)

const (
	maxCallDurationCap    = 24 * time.Hour  // livekit-sip's global cap
	defaultRingingTimeout = 3 * time.Minute // livekit-sip's default
	// dtmfDigitTime is how long sending one DTMF digit takes ('w' pauses 0.5 s).
	dtmfDigitTime = 250 * time.Millisecond
	// farEndDelay is the loopback round trip of a SIP message.
	farEndDelay = 2 * time.Millisecond
)

// Attribute keys (protocol livekit/attrs.go and livekit-sip).
const (
	attrCallStatus = livekit.AttrSIPCallStatus
	attrCallTag    = livekit.AttrSIPPrefix + "callTag"
	attrCallIDFull = livekit.AttrSIPPrefix + "callIDFull"
)

// tokenAttrKeys are the attributes livekit-sip puts in the token it signs;
// the rest are sent with the join.
var tokenAttrKeys = []string{
	livekit.AttrSIPCallID, livekit.AttrSIPTrunkID, livekit.AttrSIPDispatchRuleID,
	livekit.AttrSIPTrunkNumber, livekit.AttrSIPPhoneNumber,
}

type outboundCall struct {
	svc  *Service
	log  *slog.Logger
	rec  *callRecord
	req  *rpc.InternalCreateSIPParticipantRequest
	sc   Scenario
	opts CallOptions
	rc   *roomConn

	ringingTimeout time.Duration
	maxDuration    time.Duration
	tag            string // far end's To tag (sip.callTag)
	sipCallID      string // SIP Call-ID (sip.callIDFull)

	hangup    chan struct{} // POST /hangup: the far end hangs up now
	apiResult chan error    // the dial result for a waiting API call (nil = answered)
	apiSent   bool
	done      chan struct{} // closed when the call is over
}

// CreateSIPParticipant places an outbound call.
func (s *Service) CreateSIPParticipant(ctx context.Context, req *rpc.InternalCreateSIPParticipantRequest) (*rpc.InternalCreateSIPParticipantResponse, error) {
	if s.stopping() {
		return nil, psrpc.NewErrorf(psrpc.Unavailable, "service shutting down")
	}
	if req.RoomName == "" {
		return nil, psrpc.NewErrorf(psrpc.InvalidArgument, "room name must be set")
	}
	sc, known := ParseNumber(req.CallTo)
	log := s.log.With("call_id", req.SipCallId, "room", req.RoomName, "to", req.CallTo)
	if !known {
		log.Warn("number outside the scenario table: answering 404 Not Found", "number", req.CallTo)
	}
	opts, err := OptionsFromHeaders(sc, s.defaults, req.Headers)
	if err != nil {
		return nil, psrpc.NewError(psrpc.InvalidArgument, fmt.Errorf("sipsim: %w", err))
	}
	c := &outboundCall{
		svc: s, log: log, req: req, sc: sc, opts: opts,
		ringingTimeout: req.RingingTimeout.AsDuration(),
		maxDuration:    req.MaxCallDuration.AsDuration(),
		tag:            randomToken(10),
		sipCallID:      guid.HashedID(req.SipCallId),
		hangup:         make(chan struct{}, 1),
		apiResult:      make(chan error, 1),
		done:           make(chan struct{}),
	}
	if c.ringingTimeout <= 0 {
		c.ringingTimeout = defaultRingingTimeout
	}
	if c.maxDuration <= 0 || c.maxDuration > maxCallDurationCap {
		c.maxDuration = maxCallDurationCap
	}
	rec := newCallRecord(s.ledger, req.SipCallId, "outbound")
	rec.scenario = sc.Name
	rec.quirks = opts.Quirks.List()
	rec.room = req.RoomName
	rec.identity = req.ParticipantIdentity
	rec.trunkID = req.SipTrunkId
	rec.from = req.Number
	rec.to = req.CallTo
	rec.wait = req.WaitUntilAnswered
	c.rec = rec
	rec.started()

	attrs := make(map[string]string, len(req.ParticipantAttributes)+1)
	for k, v := range req.ParticipantAttributes {
		attrs[k] = v
	}
	attrs[attrCallStatus] = "dialing"

	wsURL, token, err := s.credentials(req.WsUrl, req.Token, req.RoomName, req.ParticipantIdentity,
		req.ParticipantName, req.ParticipantMetadata, attrs, "", nil)
	if err != nil {
		return nil, c.failBeforeJoin(err)
	}
	s.addCall(req.SipCallId, c.rec, c)
	rc, err := joinRoom(ctx, log, wsURL, token, attrs)
	if err != nil {
		err = c.failBeforeJoin(psrpc.NewError(psrpc.Internal, fmt.Errorf("update room failed: %w", err)))
		s.removeCall(req.SipCallId)
		return nil, err
	}
	c.rc = rc
	rec.joined(rc.SID())
	rec.status("dialing")
	// livekit-sip sets the same attributes again right after joining.
	rc.SetAttributes(attrs)

	if !sc.BeforePublish {
		if err := rc.Publish(); err != nil {
			log.Warn("cannot publish track", "error", err)
		} else {
			rec.event("track_published", nil)
		}
	}

	resp := &rpc.InternalCreateSIPParticipantResponse{
		ParticipantId:       rc.SID(),
		ParticipantIdentity: rc.identity,
		SipCallId:           req.SipCallId,
	}
	go rc.WatchActive(s.roomClient, req.RoomName)
	if !req.WaitUntilAnswered {
		go c.run(nil)
		return resp, nil
	}
	go c.run(ctx.Done())
	// The dial goroutine also ends the dial when the server's deadline passes,
	// and records api_error before call_ended.
	if err := <-c.apiResult; err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *outboundCall) failBeforeJoin(err error) error {
	c.log.Warn("call failed before joining", "error", err)
	c.rec.apiError(err)
	c.rec.end(EndedByServer)
	return err
}

// dial outcomes of a wait
type waitEvent int

const (
	evTimer waitEvent = iota
	evRingTimeout
	evMaxDuration
	evDisconnected
	evShutdown
	evHangup
	evRPCDone
	evPublished
)

// run plays the far end. rpcDone is the waiting API call's context (nil
// without wait_until_answered): when it ends the dial is abandoned.
func (c *outboundCall) run(rpcDone <-chan struct{}) {
	defer close(c.done)
	defer c.svc.removeCall(c.req.SipCallId)
	maxTimer := time.NewTimer(c.maxDuration)
	defer maxTimer.Stop()
	ringTimer := time.NewTimer(c.ringingTimeout)
	defer ringTimer.Stop()

	wait := func(d time.Duration, ringing bool, extra <-chan struct{}) waitEvent {
		var t <-chan time.Time
		var timer *time.Timer
		if d >= 0 {
			timer = time.NewTimer(d)
			defer timer.Stop()
			t = timer.C
		}
		var ring <-chan time.Time
		if ringing {
			ring = ringTimer.C
		}
		rpc := rpcDone
		if c.apiSent {
			rpc = nil // the API call already returned (active_before_answer)
		}
		select {
		case <-t:
			return evTimer
		case <-extra:
			return evPublished
		case <-ring:
			return evRingTimeout
		case <-maxTimer.C:
			return evMaxDuration
		case <-c.rc.Disconnected():
			return evDisconnected
		case <-c.svc.stopCh:
			return evShutdown
		case <-c.hangup:
			return evHangup
		case <-rpc: // nil once the dial is over
			return evRPCDone
		}
	}

	// --- dialing: INVITE sent once the room connection is up (ACTIVE on the
	// server) and, except for BeforePublish scenarios, the track published ---
	ev := wait(-1, true, c.rc.Active())
	if ev == evPublished {
		ev = evTimer
	}
	if ev == evTimer && !c.sc.NoTrying {
		ev = wait(farEndDelay/2, true, nil)
		if ev == evTimer {
			c.rec.sipResponse(100, reasonPhrases[100], "callee")
		}
	}
	if ev == evTimer && (c.sc.Ringing || c.sc.EarlyMedia) {
		pdd := farEndDelay
		if c.opts.PDD >= 0 {
			pdd = c.opts.PDD
		}
		ev = wait(pdd, true, nil)
		if ev == evTimer {
			code := 180
			if c.sc.EarlyMedia {
				code = 183
			}
			c.onProvisional(code)
		}
	}
	if ev == evTimer {
		switch {
		case c.sc.FinalCode == 0:
			ev = wait(-1, true, nil) // never answers
		case c.sc.AfterPublish:
			// The far end answers once the room shows the track.
			ev = wait(5*time.Second, true, c.rc.Primed())
			if ev == evPublished || ev == evTimer {
				ev = wait(50*time.Millisecond, true, nil)
			}
		case c.sc.UseRing:
			ev = wait(c.opts.Ring, true, nil)
		default:
			ev = wait(farEndDelay/2, true, nil)
		}
	}
	if ev == evTimer {
		if c.sc.Answers() {
			c.onAnswer()
		} else {
			c.onFinalFailure(c.sc.FinalCode, c.sc.FinalReason)
			return
		}
	} else {
		switch ev {
		case evHangup:
			// The callee declines while it rings.
			c.onFinalFailure(603, reasonPhrases[603])
		default:
			c.onDialAborted(ev)
		}
		return
	}

	// --- answered: talk until someone hangs up ---
	rpcDone = nil
	talk := time.Duration(-1)
	if c.sc.CalleeHangup {
		talk = c.opts.Talk
	}
	ev = wait(talk, false, nil)
	switch ev {
	case evTimer, evHangup:
		c.rec.sipRequest("BYE", "callee")
		c.rec.hangupBy(EndedByCallee, nil)
		c.finish("hangup", livekit.DisconnectReason_CLIENT_INITIATED, EndedByCallee)
	case evMaxDuration:
		c.rec.hangupBy(EndedByUs, map[string]any{"cause": "max_call_duration"})
		c.rec.sipRequest("BYE", "us")
		c.finish("hangup", livekit.DisconnectReason_CLIENT_INITIATED, EndedByUs)
	case evDisconnected:
		c.serverEnded()
	case evShutdown:
		c.rec.hangupBy(EndedByServer, map[string]any{"cause": "sipsim_shutdown"})
		c.rec.sipRequest("BYE", "us")
		c.finish("", livekit.DisconnectReason_UNKNOWN_REASON, EndedByServer)
	}
}

// onProvisional handles a 18x from the far end.
func (c *outboundCall) onProvisional(code int) {
	c.rec.sipResponse(code, reasonPhrases[code], "callee")
	c.rec.ringingAt(time.Now())
	if !c.opts.Quirks.Has(QuirkSkipRinging) {
		c.setStatus("ringing")
	}
	if c.opts.Quirks.Has(QuirkActiveBeforeAnswer) {
		// Treated as answered on the LiveKit side while the far end still rings.
		c.setAnsweredAttrs()
		c.setStatus("active")
		c.sendAPIResult(nil)
	}
}

func (c *outboundCall) setAnsweredAttrs() {
	c.rc.SetAttributes(map[string]string{attrCallTag: c.tag, attrCallIDFull: c.sipCallID})
}

// onAnswer: 200 OK from the far end.
func (c *outboundCall) onAnswer() {
	c.rec.sipResponse(200, reasonPhrases[200], "callee")
	c.rec.setFinalCode(200)
	c.rec.markAnswered()
	if c.opts.Quirks.Has(QuirkActiveBeforeAnswer) && c.apiSent {
		return // the LiveKit side already showed the call as active
	}
	c.setAnsweredAttrs()
	c.rc.Subscribe()
	if digits := c.req.Dtmf; digits != "" {
		c.setStatus("automation")
		time.Sleep(dtmfDuration(digits))
	}
	c.setStatus("active")
	c.sendAPIResult(nil)
}

func dtmfDuration(digits string) time.Duration {
	var d time.Duration
	for _, r := range digits {
		if r == 'w' || r == 'W' {
			d += 500 * time.Millisecond
		} else {
			d += dtmfDigitTime
		}
	}
	return d
}

// onFinalFailure: the far end answered with a failure code.
func (c *outboundCall) onFinalFailure(code int, reason string) {
	c.rec.sipResponse(code, reason, "callee")
	c.rec.setFinalCode(code)
	c.rec.hangupBy(EndedByCallee, map[string]any{"sip_status_code": code})
	f := classifyFinal(code, reason)
	leave := f.Leave
	if code >= 500 && code < 600 && c.opts.Quirks.Has(QuirkTrunkFailureReason) {
		leave = livekit.DisconnectReason_SIP_TRUNK_FAILURE
	}
	c.noteAPIError(f.APIErr)
	c.finish("", leave, EndedByCallee)
	c.sendAPIResult(f.APIErr)
}

// onDialAborted: the dial ended without a final answer from the far end.
func (c *outboundCall) onDialAborted(ev waitEvent) {
	switch ev {
	default: // not expected; end the dial as a timeout rather than hang
		fallthrough
	case evRingTimeout, evRPCDone:
		c.rec.sipRequest("CANCEL", "us")
		c.rec.hangupBy(EndedByTimeout, map[string]any{"cause": "ringing_timeout"})
		f := timeoutFailure()
		c.noteAPIError(f.APIErr)
		c.finish("", f.Leave, EndedByTimeout)
		c.sendAPIResult(f.APIErr)
	case evMaxDuration:
		c.rec.sipRequest("CANCEL", "us")
		c.rec.hangupBy(EndedByUs, map[string]any{"cause": "max_call_duration"})
		f := timeoutFailure()
		c.noteAPIError(f.APIErr)
		c.finish("", f.Leave, EndedByUs)
		c.sendAPIResult(f.APIErr)
	case evDisconnected:
		c.rec.sipRequest("CANCEL", "us")
		err := timeoutFailure().APIErr
		c.noteAPIError(err)
		c.serverEnded()
		c.sendAPIResult(err)
	case evShutdown:
		c.rec.sipRequest("CANCEL", "us")
		c.rec.hangupBy(EndedByServer, map[string]any{"cause": "sipsim_shutdown"})
		f := shutdownFailure()
		c.noteAPIError(f.APIErr)
		c.finish("", f.Leave, EndedByServer)
		c.sendAPIResult(f.APIErr)
	}
}

// noteAPIError records the error a waiting API call is about to get.
func (c *outboundCall) noteAPIError(err error) {
	if err != nil && c.req.WaitUntilAnswered && !c.apiSent {
		c.rec.apiError(err)
	}
}

func (c *outboundCall) sendAPIResult(err error) {
	if c.apiSent {
		return
	}
	c.apiSent = true
	c.apiResult <- err
}

// setStatus sets sip.callStatus and records it.
func (c *outboundCall) setStatus(v string) {
	c.rec.status(v)
	c.rc.SetAttributes(map[string]string{attrCallStatus: v})
}

// serverEnded: livekit-server disconnected the participant (removed, room
// deleted, ...). The status stays; nothing is sent.
func (c *outboundCall) serverEnded() {
	reason := c.rc.ServerReason()
	by := EndedByServer
	if reason == livekit.DisconnectReason_PARTICIPANT_REMOVED || reason == livekit.DisconnectReason_ROOM_DELETED {
		by = EndedByUs
	}
	c.rec.hangupBy(by, map[string]any{"cause": "room_disconnected", "server_reason": reason.String()})
	if c.rec.isAnswered() {
		c.rec.sipRequest("BYE", "us")
	}
	c.rec.left(reason.String(), reason.String(), true, nil)
	c.rec.end(by)
}

// finish ends the call on the LiveKit side: optionally a last status, then
// the leave, with the quirk switches applied.
func (c *outboundCall) finish(status string, reason livekit.DisconnectReason, endedBy string) {
	finishCall(c.svc, c.rec, c.rc, c.opts, status, reason)
	c.rec.end(endedBy)
}

// finishCall is shared by both directions.
func finishCall(s *Service, rec *callRecord, rc *roomConn, opts CallOptions, status string, reason livekit.DisconnectReason) {
	if status == "hangup" && opts.Quirks.Has(QuirkNoHangupStatus) {
		status = ""
	}
	if status != "" && opts.Quirks.Has(QuirkStatusAfterLeaveRace) {
		raceFinish(s, rec, rc, opts, status, reason)
		return
	}
	if status != "" {
		rec.status(status)
		rc.SetAttributes(map[string]string{attrCallStatus: status})
	}
	leave(rec, rc, opts, reason, nil)
}

func leave(rec *callRecord, rc *roomConn, opts CallOptions, reason livekit.DisconnectReason, extra map[string]any) {
	if opts.Quirks.Has(QuirkMissingReason) {
		n := rc.LeaveAbrupt()
		if extra == nil {
			extra = map[string]any{}
		}
		extra["cut_connections"] = n
		rec.left("abrupt", "", false, extra)
		return
	}
	rc.Leave(reason)
	rec.left(reason.String(), seenReason(reason).String(), false, extra)
}

// raceFinish sends the last status and the leave in an order that varies
// from call to call (livekit/sip PR #725): "status_first" sets the status on
// the signal connection and then leaves; "leave_first" leaves and then sets
// the status through the server API (RoomService.UpdateParticipant), which
// livekit-server refuses for a participant that already left, so the room
// never sees it. Without X-Sim-Race the order is drawn at random per call.
func raceFinish(s *Service, rec *callRecord, rc *roomConn, opts CallOptions, status string, reason livekit.DisconnectReason) {
	order := opts.RaceOrder
	drawn := false
	if order == "" {
		order = "status_first"
		if rand.IntN(2) == 0 {
			order = "leave_first"
		}
		drawn = true
	}
	rec.status(status)
	attrs := map[string]string{attrCallStatus: status}
	extra := map[string]any{"race_order": order, "race_drawn": drawn}
	if order == "status_first" {
		rc.SetAttributes(attrs)
		leave(rec, rc, opts, reason, extra)
		return
	}
	leave(rec, rc, opts, reason, extra)
	err := s.updateAttributesViaAPI(rec.room, rec.identity, attrs)
	rec.event("status_via_api", map[string]any{"value": status, "ok": err == nil, "error": errString(err)})
}

func errString(err error) any {
	if err == nil {
		return nil
	}
	return err.Error()
}

// Hangup: the far end hangs up now (BYE; a decline while still ringing).
func (c *outboundCall) Hangup() {
	select {
	case c.hangup <- struct{}{}:
	default:
	}
}

// Done is closed when the call is over.
func (c *outboundCall) Done() <-chan struct{} { return c.done }

const tokenChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func randomToken(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteByte(tokenChars[rand.IntN(len(tokenChars))])
	}
	return b.String()
}
