package main

// Inbound calls, started through the control API: the simulated caller's
// INVITE goes through trunk authentication and dispatch rule evaluation on
// livekit-server (IOInfo over psrpc), then the SIP participant joins the room
// the rule chose with "ringing", publishes its track and answers once it
// subscribed to an audio track (pkg/sip/inbound.go, traces inbound*).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/rpc"
	"github.com/livekit/protocol/sip"
)

// Inbound scenarios.
const (
	InboundAnswerCallerHangup = "answer_caller_hangup"
	InboundCallerGivesUp      = "caller_gives_up"
)

// answerToActive is the time from the subscription to "active": 200 OK,
// the caller's ACK and first RTP (40 to 50 ms in the traces).
const answerToActive = 40 * time.Millisecond

// inboundRequest is the POST /inbound body.
type inboundRequest struct {
	From        string            `json:"from"`
	To          string            `json:"to"`
	Scenario    string            `json:"scenario"`
	Talk        *float64          `json:"talk"`
	GiveUpAfter *float64          `json:"give_up_after"`
	RingTimeout *float64          `json:"ring_timeout"`
	Quirks      []string          `json:"quirks"`
	SrcIP       string            `json:"src_ip"`
	ToHost      string            `json:"to_host"`
	Headers     map[string]string `json:"headers"`
	Username    string            `json:"username"`
	Password    string            `json:"password"`
}

// inboundRefusal is what the caller would get instead of a call.
type inboundRefusal struct {
	HTTPStatus int
	SIPCode    int // 0: no SIP answer at all (dropped)
	Message    string
}

func (e *inboundRefusal) Error() string { return e.Message }

type inboundCall struct {
	svc  *Service
	log  *slog.Logger
	rec  *callRecord
	req  inboundRequest
	opts CallOptions
	rc   *roomConn

	talk        time.Duration
	giveUpAfter time.Duration
	ringTimeout time.Duration
	maxDuration time.Duration

	hangup chan struct{}
	done   chan struct{}
}

func secondsOr(v *float64, def time.Duration) time.Duration {
	if v == nil || *v < 0 {
		return def
	}
	return time.Duration(*v * float64(time.Second))
}

// startInbound places an inbound call; it returns once the participant joined
// the room, or with an *inboundRefusal (or another error).
func (s *Service) startInbound(ctx context.Context, req inboundRequest) (*inboundCall, error) {
	if s.stopping() {
		return nil, &inboundRefusal{HTTPStatus: http.StatusServiceUnavailable, SIPCode: 503, Message: "service shutting down"}
	}
	if req.Scenario == "" {
		req.Scenario = InboundAnswerCallerHangup
	}
	if req.Scenario != InboundAnswerCallerHangup && req.Scenario != InboundCallerGivesUp {
		return nil, fmt.Errorf("unknown inbound scenario %q (want %s or %s)", req.Scenario, InboundAnswerCallerHangup, InboundCallerGivesUp)
	}
	if req.From == "" || req.To == "" {
		return nil, errors.New("from and to are required")
	}
	if req.SrcIP == "" {
		req.SrcIP = "127.0.0.1"
	}
	if req.ToHost == "" {
		req.ToHost = "127.0.0.1"
	}
	q, err := QuirksFromList(req.Quirks)
	if err != nil {
		return nil, err
	}
	opts := CallOptions{Quirks: s.defaults.Quirks.Merge(q)}
	if v, ok := headerValue(req.Headers, HeaderRace); ok {
		opts.RaceOrder = strings.ToLower(strings.TrimSpace(v))
	}

	callID := sip.NewCallID()
	sipCallID := randomToken(16) + "@" + req.SrcIP
	fromTag := randomToken(10)
	c := &inboundCall{
		svc: s, req: req, opts: opts,
		log:         s.log.With("call_id", callID, "from", req.From, "to", req.To),
		talk:        secondsOr(req.Talk, s.defaults.Talk),
		giveUpAfter: secondsOr(req.GiveUpAfter, 5*time.Second),
		hangup:      make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	rec := newCallRecord(s.ledger, callID, "inbound")
	rec.scenario = req.Scenario
	rec.quirks = opts.Quirks.List()
	rec.from = req.From
	rec.to = req.To
	c.rec = rec

	call := &rpc.SIPCall{
		LkCallId:  callID,
		SipCallId: sipCallID,
		SourceIp:  req.SrcIP,
		Address:   &livekit.SIPUri{User: req.To, Host: req.ToHost},
		From:      &livekit.SIPUri{User: req.From, Host: req.SrcIP},
		To:        &livekit.SIPUri{User: req.To, Host: req.ToHost},
	}
	refuse := func(r *inboundRefusal) (*inboundCall, error) {
		rec.started()
		if r.SIPCode != 0 {
			rec.sipResponse(r.SIPCode, r.Message, "us")
			rec.setFinalCode(r.SIPCode)
		} else {
			rec.event("dropped", map[string]any{"message": r.Message})
		}
		rec.end(EndedByServer)
		return nil, r
	}

	// 100 Trying, then the trunk authentication.
	rec.sipResponse(100, "Processing", "us")
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	auth, err := s.io.GetSIPTrunkAuthentication(ictx, &rpc.GetSIPTrunkAuthenticationRequest{
		Call: call, SipCallId: callID,
		From: req.From, FromHost: req.SrcIP, To: req.To, ToHost: req.ToHost, SrcAddress: req.SrcIP,
	})
	if err != nil {
		c.log.Warn("trunk authentication failed", "error", err)
		return refuse(&inboundRefusal{http.StatusServiceUnavailable, 503, "Try again later"})
	}
	switch {
	case auth.ErrorCode == rpc.SIPTrunkAuthenticationError_SIP_TRUNK_AUTH_ERROR_QUOTA_EXCEEDED:
		return refuse(&inboundRefusal{http.StatusServiceUnavailable, 503, "Service temporarily unavailable"})
	case auth.ErrorCode == rpc.SIPTrunkAuthenticationError_SIP_TRUNK_AUTH_ERROR_NO_TRUNK_FOUND:
		return refuse(&inboundRefusal{http.StatusNotFound, 404, "No trunk found"})
	case auth.Drop:
		return refuse(&inboundRefusal{http.StatusForbidden, 0, "call dropped by the trunk configuration (no SIP answer)"})
	case auth.Username != "" && auth.Password != "":
		if req.Username != auth.Username || req.Password != auth.Password {
			return refuse(&inboundRefusal{http.StatusUnauthorized, 401, "Unauthorized"})
		}
	}
	rec.trunkID = auth.SipTrunkId

	// 180 Ringing while the dispatch rule is evaluated.
	rec.sipResponse(180, "Ringing", "us")
	disp, err := s.io.EvaluateSIPDispatchRules(ictx, &rpc.EvaluateSIPDispatchRulesRequest{
		SipTrunkId: auth.SipTrunkId, Call: call, SipCallId: callID,
		CallingNumber: req.From, CallingHost: req.SrcIP,
		CalledNumber: req.To, CalledHost: req.ToHost, SrcAddress: req.SrcIP,
	})
	if err != nil {
		c.log.Warn("dispatch evaluation failed", "error", err)
		return refuse(&inboundRefusal{http.StatusServiceUnavailable, 503, "Try again later"})
	}
	disp.Upgrade()
	if disp.SipTrunkId != "" {
		rec.trunkID = disp.SipTrunkId
	}
	switch disp.Result {
	case rpc.SIPDispatchResult_ACCEPT:
	case rpc.SIPDispatchResult_LEGACY_ACCEPT_OR_PIN:
		if disp.RequestPin {
			return refuse(&inboundRefusal{http.StatusNotImplemented, 501, "PIN dispatch rules are not simulated"})
		}
	case rpc.SIPDispatchResult_REQUEST_PIN:
		return refuse(&inboundRefusal{http.StatusNotImplemented, 501, "PIN dispatch rules are not simulated"})
	case rpc.SIPDispatchResult_REJECT:
		return refuse(&inboundRefusal{http.StatusNotFound, 404, "Does not match Trunks or Dispatch Rules"})
	case rpc.SIPDispatchResult_DROP:
		return refuse(&inboundRefusal{http.StatusNotFound, 0, "call dropped: no trunk or dispatch rule matched (no SIP answer)"})
	default:
		return refuse(&inboundRefusal{http.StatusNotImplemented, 501, fmt.Sprintf("unexpected dispatch result %v", disp.Result)})
	}

	c.ringTimeout = disp.RingingTimeout.AsDuration()
	if req.RingTimeout != nil && *req.RingTimeout > 0 {
		c.ringTimeout = secondsOr(req.RingTimeout, 0)
	}
	if c.ringTimeout <= 0 {
		c.ringTimeout = defaultRingingTimeout
	}
	c.maxDuration = disp.MaxCallDuration.AsDuration()
	if c.maxDuration <= 0 || c.maxDuration > maxCallDurationCap {
		c.maxDuration = maxCallDurationCap
	}
	rec.room = disp.RoomName
	rec.identity = disp.ParticipantIdentity
	rec.started()
	c.log = c.log.With("room", disp.RoomName)

	attrs := make(map[string]string, len(disp.ParticipantAttributes)+4)
	for k, v := range disp.ParticipantAttributes {
		attrs[k] = v
	}
	mapHeaders(attrs, req.Headers, disp.HeadersToAttributes, disp.IncludeHeaders)
	attrs[attrCallTag] = fromTag
	attrs[attrCallIDFull] = sipCallID
	joinStatus := "ringing"
	if opts.Quirks.Has(QuirkActiveBeforeAnswer) {
		joinStatus = "active"
	}
	attrs[attrCallStatus] = joinStatus

	wsURL, token, err := s.credentials(disp.WsUrl, disp.Token, disp.RoomName, disp.ParticipantIdentity,
		disp.ParticipantName, disp.ParticipantMetadata, attrs, disp.RoomPreset, disp.RoomConfig)
	if err != nil {
		rec.sipResponse(500, "Server Internal Error", "us")
		rec.setFinalCode(500)
		rec.end(EndedByServer)
		return nil, err
	}
	s.addCall(callID, rec, c)
	rc, err := joinRoom(ctx, c.log, wsURL, token, attrs)
	if err != nil {
		rec.sipResponse(486, "Rejected", "us")
		rec.setFinalCode(486)
		rec.end(EndedByServer)
		s.removeCall(callID)
		return nil, &inboundRefusal{http.StatusBadGateway, 486, fmt.Sprintf("cannot join the room: %v", err)}
	}
	c.rc = rc
	rec.joined(rc.SID())
	rec.status(joinStatus)
	rc.SetAttributes(attrs) // the no-op re-set after joining
	if err := rc.Publish(); err != nil {
		c.log.Warn("cannot publish track", "error", err)
	} else {
		rec.event("track_published", nil)
	}
	go c.run()
	return c, nil
}

// mapHeaders applies the dispatch rule's header to attribute mapping to the
// caller's headers (livekit-sip HeadersToAttrs).
func mapHeaders(attrs, headers, hdrToAttr map[string]string, opts livekit.SIPHeaderOptions) {
	for name, v := range headers {
		lname := strings.ToLower(name)
		switch opts {
		case livekit.SIPHeaderOptions_SIP_ALL_HEADERS:
			attrs[livekit.AttrSIPHeaderPrefix+lname] = v
		case livekit.SIPHeaderOptions_SIP_X_HEADERS:
			if strings.HasPrefix(lname, "x-") {
				attrs[livekit.AttrSIPHeaderPrefix+lname] = v
			}
		}
		for h, attr := range hdrToAttr {
			if strings.EqualFold(h, name) {
				attrs[attr] = v
			}
		}
	}
}

func (c *inboundCall) run() {
	defer close(c.done)
	defer c.svc.removeCall(c.rec.callID)
	c.rc.Subscribe()

	ringTimer := time.NewTimer(c.ringTimeout)
	defer ringTimer.Stop()
	maxTimer := time.NewTimer(c.maxDuration)
	defer maxTimer.Stop()
	var giveUp <-chan time.Time
	if c.req.Scenario == InboundCallerGivesUp {
		t := time.NewTimer(c.giveUpAfter)
		defer t.Stop()
		giveUp = t.C
	}

	// --- ringing: wait for a subscription ---
	select {
	case <-c.rc.Subscribed():
	case <-giveUp:
		c.callerCancels()
		return
	case <-c.hangup:
		c.callerCancels()
		return
	case <-ringTimer.C:
		// livekit-sip gives up: 486 to the caller, the status stays.
		c.rec.hangupBy(EndedByTimeout, map[string]any{"cause": "ringing_timeout"})
		c.rec.sipResponse(486, "Rejected", "us")
		c.rec.setFinalCode(486)
		c.finish("", EndedByTimeout)
		return
	case <-maxTimer.C:
		c.rec.hangupBy(EndedByUs, map[string]any{"cause": "max_call_duration"})
		c.rec.sipResponse(486, "Rejected", "us")
		c.rec.setFinalCode(486)
		c.finish("hangup", EndedByUs)
		return
	case <-c.rc.Disconnected():
		c.serverEnded(486)
		return
	case <-c.svc.stopCh:
		c.rec.hangupBy(EndedByServer, map[string]any{"cause": "sipsim_shutdown"})
		c.rec.sipResponse(486, "Rejected", "us")
		c.rec.setFinalCode(486)
		c.finish("", EndedByServer)
		return
	}

	// --- answer: 200 OK, ACK and first RTP, then active ---
	c.rec.sipResponse(200, "OK", "us")
	c.rec.setFinalCode(200)
	c.rec.markAnswered()
	select {
	case <-time.After(answerToActive):
	case <-c.rc.Disconnected():
		c.serverEnded(0)
		return
	}
	if !c.opts.Quirks.Has(QuirkActiveBeforeAnswer) {
		c.rec.status("active")
		c.rc.SetAttributes(map[string]string{attrCallStatus: "active"})
	}

	// --- talk ---
	var talk <-chan time.Time
	if c.req.Scenario == InboundAnswerCallerHangup {
		t := time.NewTimer(c.talk)
		defer t.Stop()
		talk = t.C
	}
	select {
	case <-talk:
		c.callerByes()
	case <-giveUp:
		c.callerByes()
	case <-c.hangup:
		c.callerByes()
	case <-maxTimer.C:
		c.rec.hangupBy(EndedByUs, map[string]any{"cause": "max_call_duration"})
		c.rec.sipRequest("BYE", "us")
		c.finish("hangup", EndedByUs)
	case <-c.rc.Disconnected():
		c.serverEnded(0)
	case <-c.svc.stopCh:
		c.rec.hangupBy(EndedByServer, map[string]any{"cause": "sipsim_shutdown"})
		c.rec.sipRequest("BYE", "us")
		c.finish("", EndedByServer)
	}
}

// callerCancels: CANCEL while ringing. livekit-sip answers 487 and sets
// "hangup" (CallCancelled), then leaves.
func (c *inboundCall) callerCancels() {
	c.rec.sipRequest("CANCEL", "caller")
	c.rec.hangupBy(EndedByCaller, nil)
	c.rec.sipResponse(487, "Request Terminated", "us")
	c.rec.setFinalCode(487)
	c.finish("hangup", EndedByCaller)
}

// callerByes: BYE after the answer.
func (c *inboundCall) callerByes() {
	c.rec.sipRequest("BYE", "caller")
	c.rec.hangupBy(EndedByCaller, nil)
	c.finish("hangup", EndedByCaller)
}

// finish: livekit-sip closes the room with no reason (UNKNOWN_REASON), which
// livekit-server 1.13.5 shows as CLIENT_INITIATED.
func (c *inboundCall) finish(status, endedBy string) {
	finishCall(c.svc, c.rec, c.rc, c.opts, status, livekit.DisconnectReason_UNKNOWN_REASON)
	c.rec.end(endedBy)
}

func (c *inboundCall) serverEnded(sipCode int) {
	reason := c.rc.ServerReason()
	by := EndedByServer
	if reason == livekit.DisconnectReason_PARTICIPANT_REMOVED || reason == livekit.DisconnectReason_ROOM_DELETED {
		by = EndedByUs
	}
	c.rec.hangupBy(by, map[string]any{"cause": "room_disconnected", "server_reason": reason.String()})
	if sipCode != 0 {
		c.rec.sipResponse(sipCode, "Rejected", "us")
		c.rec.setFinalCode(sipCode)
	} else {
		c.rec.sipRequest("BYE", "us")
	}
	c.rec.left(reason.String(), reason.String(), true, nil)
	c.rec.end(by)
}

// Hangup: the caller hangs up now (CANCEL while ringing, BYE after).
func (c *inboundCall) Hangup() {
	select {
	case c.hangup <- struct{}{}:
	default:
	}
}

// Done is closed when the call is over.
func (c *inboundCall) Done() <-chan struct{} { return c.done }
