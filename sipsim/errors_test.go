package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/livekit/protocol/livekit"
	"github.com/livekit/psrpc"
)

func TestFailureCodesLeaveWithLivekitSipsReasons(t *testing.T) {
	cases := []struct {
		code   int
		reason string
		leave  livekit.DisconnectReason
		seen   livekit.DisconnectReason
	}{
		{486, "Busy Here", livekit.DisconnectReason_USER_REJECTED, livekit.DisconnectReason_USER_REJECTED},
		{603, "Decline", livekit.DisconnectReason_USER_REJECTED, livekit.DisconnectReason_USER_REJECTED},
		{403, "Forbidden", livekit.DisconnectReason_USER_REJECTED, livekit.DisconnectReason_USER_REJECTED},
		{404, "Not Found", livekit.DisconnectReason_USER_UNAVAILABLE, livekit.DisconnectReason_USER_UNAVAILABLE},
		{480, "Temporarily Unavailable", livekit.DisconnectReason_USER_UNAVAILABLE, livekit.DisconnectReason_USER_UNAVAILABLE},
		{503, "Service Unavailable", livekit.DisconnectReason_UNKNOWN_REASON, livekit.DisconnectReason_CLIENT_INITIATED},
		{500, "Server Internal Error", livekit.DisconnectReason_UNKNOWN_REASON, livekit.DisconnectReason_CLIENT_INITIATED},
		{503, "CPS limit exceeded", livekit.DisconnectReason_USER_REJECTED, livekit.DisconnectReason_USER_REJECTED},
	}
	for _, c := range cases {
		f := classifyFinal(c.code, c.reason)
		if f.Leave != c.leave || seenReason(f.Leave) != c.seen {
			t.Errorf("%d: leave %v seen %v, want %v %v", c.code, f.Leave, seenReason(f.Leave), c.leave, c.seen)
		}
	}
	if seenReason(livekit.DisconnectReason_SIP_TRUNK_FAILURE) != livekit.DisconnectReason_CLIENT_INITIATED {
		t.Error("livekit-server 1.13.5 does not keep SIP_TRUNK_FAILURE")
	}
}

func TestAPIErrorsCarryTheTracesCodesAndMessages(t *testing.T) {
	cases := []struct {
		code    int
		reason  string
		grpc    codes.Code
		message string
	}{
		{486, "Busy Here", codes.FailedPrecondition, "INVITE failed: sip status: 486: Busy Here"},
		{603, "Decline", codes.PermissionDenied, "unexpected status from INVITE response: sip status: 603: Decline"},
		{404, "Not Found", codes.NotFound, "INVITE failed: sip status: 404: Not Found"},
		{480, "Temporarily Unavailable", codes.FailedPrecondition, "INVITE failed: sip status: 480: Temporarily Unavailable"},
		{503, "Service Unavailable", codes.FailedPrecondition, "unexpected status from INVITE response: sip status: 503: Service Unavailable"},
		{403, "Forbidden", codes.PermissionDenied, "unexpected status from INVITE response: sip status: 403: Forbidden"},
	}
	for _, c := range cases {
		err := classifyFinal(c.code, c.reason).APIErr
		if err.Error() != c.message {
			t.Errorf("%d: message %q", c.code, err.Error())
		}
		st, ok := status.FromError(err)
		if !ok || st.Code() != c.grpc {
			t.Errorf("%d: grpc code %v, want %v", c.code, st.Code(), c.grpc)
		}
		if sipStatusCodeOf(err) != c.code {
			t.Errorf("%d: sip status %d", c.code, sipStatusCodeOf(err))
		}
	}
	to := timeoutFailure()
	if to.APIErr.Error() != "sip request timed out" || psrpcCodeOf(to.APIErr) != string(psrpc.Canceled) || sipStatusCodeOf(to.APIErr) != 0 {
		t.Errorf("timeout: %v %s", to.APIErr, psrpcCodeOf(to.APIErr))
	}
	if to.Leave != livekit.DisconnectReason_USER_UNAVAILABLE {
		t.Errorf("timeout leaves with %v", to.Leave)
	}
}

// The traces' error_details is a google.rpc.Status of the error: code,
// message and the SIPStatus detail. Rebuild it from our errors and compare
// byte for byte with the recordings of the real livekit-sip.
func TestErrorDetailsMatchTheRecordings(t *testing.T) {
	dir := filepath.Join("..", "..", "shared", "traces")
	for run, code := range map[string]int{"b_wait": 486, "d_wait": 603, "e_wait": 404, "f_wait": 480, "g_wait": 503} {
		b, err := os.ReadFile(filepath.Join(dir, run+".result.json"))
		if err != nil {
			t.Skipf("traces not available: %v", err)
		}
		var res struct {
			Error struct {
				Metadata map[string]string `json:"metadata"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &res); err != nil {
			t.Fatal(err)
		}
		sc := scenarioForCode(t, code)
		apiErr := classifyFinal(code, sc.FinalReason).APIErr
		st, _ := status.FromError(apiErr)
		detail, err := anypb.New(livekit.SIPStatusFrom(apiErr))
		if err != nil {
			t.Fatal(err)
		}
		p := st.Proto()
		p.Message = apiErr.Error()
		p.Details = []*anypb.Any{detail}
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := base64.StdEncoding.EncodeToString(raw), res.Error.Metadata["error_details"]; got != want {
			t.Errorf("%s: error_details\n got %s\nwant %s", run, got, want)
		}
		if res.Error.Metadata["sip_status"] != sc.FinalReason {
			t.Errorf("%s: sip_status %q, ours %q", run, res.Error.Metadata["sip_status"], sc.FinalReason)
		}
	}
}

func scenarioForCode(t *testing.T, code int) Scenario {
	for _, s := range scenarios {
		if s.FinalCode == code {
			return s
		}
	}
	t.Fatalf("no scenario answers %d", code)
	return Scenario{}
}
