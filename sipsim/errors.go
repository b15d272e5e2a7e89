package main

// What a SIP result becomes on the LiveKit side: the LeaveRequest reason the
// SIP participant sends and the error CreateSIPParticipant returns. Written
// from livekit-sip's documented behaviour (SIP_FACTS.md, traces/*.result.json).

import (
	"errors"
	"fmt"
	"strings"

	"github.com/livekit/protocol/livekit"
	"github.com/livekit/psrpc"
)

// errSIPRequestTimeout is the message livekit-sip returns when the far end
// did not answer before the ringing timeout (trace h: twirp "canceled").
var errSIPRequestTimeout = errors.New("sip request timed out")

// inviteFailure is the outcome of a failed dial.
type inviteFailure struct {
	Leave  livekit.DisconnectReason // reason sent in the LeaveRequest
	APIErr error                    // returned to the CreateSIPParticipant caller
}

// classifyFinal maps a final non-2xx answer of the far end.
func classifyFinal(code int, reason string) inviteFailure {
	st := &livekit.SIPStatus{Code: livekit.SIPStatusCode(code), Status: reason}
	var apiErr error
	switch code {
	case 400, 404, 480, 486, 488:
		apiErr = fmt.Errorf("INVITE failed: %w", st)
	default:
		apiErr = fmt.Errorf("unexpected status from INVITE response: %w", st)
	}
	return inviteFailure{Leave: leaveReasonForCode(code, reason), APIErr: apiErr}
}

// leaveReasonForCode is the reason livekit-sip leaves the room with after a
// final SIP failure code (it derives it from its internal call status).
func leaveReasonForCode(code int, reason string) livekit.DisconnectReason {
	switch {
	case code == 404 || code == 408 || code == 480:
		return livekit.DisconnectReason_USER_UNAVAILABLE
	case code >= 400 && code < 500:
		return livekit.DisconnectReason_USER_REJECTED
	case code >= 500 && code < 600:
		r := strings.ToLower(reason)
		if strings.Contains(r, "cps limit exceeded") || strings.Contains(r, "concurrent call limit exceeded") {
			return livekit.DisconnectReason_USER_REJECTED
		}
		// livekit-sip sends UNKNOWN_REASON here; livekit-server 1.13.5 shows
		// it as CLIENT_INITIATED.
		return livekit.DisconnectReason_UNKNOWN_REASON
	case code >= 600:
		return livekit.DisconnectReason_USER_REJECTED
	}
	return livekit.DisconnectReason_UNKNOWN_REASON
}

// timeoutFailure: no final answer before the ringing timeout, or the dial was
// aborted because the room went away.
func timeoutFailure() inviteFailure {
	return inviteFailure{
		Leave:  livekit.DisconnectReason_USER_UNAVAILABLE,
		APIErr: psrpc.NewError(psrpc.Canceled, errSIPRequestTimeout),
	}
}

// shutdownFailure: the simulator shuts down while the call is being dialed.
func shutdownFailure() inviteFailure {
	return inviteFailure{
		Leave:  livekit.DisconnectReason_UNKNOWN_REASON,
		APIErr: psrpc.NewErrorf(psrpc.Canceled, "service shutting down"),
	}
}

// seenReason is the reason other participants see for a LeaveRequest reason
// with livekit-server 1.13.5, which keeps only three reasons of a client's
// LeaveRequest (pkg/rtc/signalling/signalhandler.go).
func seenReason(sent livekit.DisconnectReason) livekit.DisconnectReason {
	switch sent {
	case livekit.DisconnectReason_USER_UNAVAILABLE,
		livekit.DisconnectReason_USER_REJECTED,
		livekit.DisconnectReason_AGENT_ERROR:
		return sent
	}
	return livekit.DisconnectReason_CLIENT_INITIATED
}

// sipStatusCodeOf extracts the SIP code from an API error, 0 if none.
func sipStatusCodeOf(err error) int {
	if st := livekit.SIPStatusFrom(err); st != nil {
		return int(st.Code)
	}
	return 0
}

// psrpcCodeOf is the psrpc code the error will carry over the bus.
func psrpcCodeOf(err error) string {
	if code, ok := psrpc.GetErrorCode(err); ok {
		return string(code)
	}
	return string(psrpc.Unknown)
}
