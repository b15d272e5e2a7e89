package main

// The number table: which far-end behaviour a dialed number selects, and the
// per-call options (ring and talk time, quirk switches) read from the
// request's SIP headers. Pure functions, no I/O: scenario_test.go covers them.

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Scenario is the far end's behaviour for an outbound call.
type Scenario struct {
	Code string // the two digits SS of +1555SS...
	Name string
	// Provisional responses the far end sends before its final answer.
	Ringing     bool // sends 180 Ringing
	EarlyMedia  bool // sends 183 Session Progress instead of 180
	NoTrying    bool // sends no 100 Trying (answer_immediately, as sipp in trace i)
	FinalCode   int  // 200, or the failure code; 0 = never answers (no_answer)
	FinalReason string
	// UseRing: the final answer comes after the ring time; otherwise at once.
	UseRing bool
	// DefaultRing overrides the --ring default for this scenario (slow_answer).
	DefaultRing time.Duration
	// CalleeHangup: after answering, the callee sends BYE after the talk time.
	CalleeHangup bool
	// BeforePublish: the far end answers before the room track is published
	// (404 and 480 in the traces e and f).
	BeforePublish bool
	// AfterPublish: the final answer waits until the room track is published.
	AfterPublish bool
}

// Answers reports whether the far end answers the call (200 OK).
func (s Scenario) Answers() bool { return s.FinalCode == 200 }

// scenarios is the number table, keyed by SS.
var scenarios = map[string]Scenario{
	"00": {Name: "answer_callee_hangup", Ringing: true, FinalCode: 200, FinalReason: "OK", UseRing: true, CalleeHangup: true},
	"01": {Name: "answer_wait", Ringing: true, FinalCode: 200, FinalReason: "OK", UseRing: true},
	"02": {Name: "busy", Ringing: true, FinalCode: 486, FinalReason: "Busy Here", UseRing: true},
	"03": {Name: "decline", Ringing: true, FinalCode: 603, FinalReason: "Decline", UseRing: true},
	"04": {Name: "forbidden", FinalCode: 403, FinalReason: "Forbidden", AfterPublish: true},
	"05": {Name: "not_found", FinalCode: 404, FinalReason: "Not Found", BeforePublish: true},
	"06": {Name: "unavailable", FinalCode: 480, FinalReason: "Temporarily Unavailable", BeforePublish: true},
	"07": {Name: "server_error", Ringing: true, FinalCode: 503, FinalReason: "Service Unavailable", UseRing: true},
	"08": {Name: "early_media", EarlyMedia: true, FinalCode: 200, FinalReason: "OK", UseRing: true, CalleeHangup: true},
	"09": {Name: "no_answer", Ringing: true, FinalCode: 0},
	"10": {Name: "slow_answer", Ringing: true, FinalCode: 200, FinalReason: "OK", UseRing: true, DefaultRing: 20 * time.Second, CalleeHangup: true},
	"11": {Name: "answer_immediately", NoTrying: true, FinalCode: 200, FinalReason: "OK"},
	"12": {Name: "server_error_500", Ringing: true, FinalCode: 500, FinalReason: "Server Internal Error", UseRing: true},
}

// unknownScenario is what a number outside the table gets: a 404 like not_found.
var unknownScenario = Scenario{Code: "", Name: "unknown", FinalCode: 404, FinalReason: "Not Found", BeforePublish: true}

func init() {
	for code, s := range scenarios {
		s.Code = code
		scenarios[code] = s
	}
}

// ScenarioCodes lists the table in order, for the docs and the log.
func ScenarioCodes() []string {
	codes := make([]string, 0, len(scenarios))
	for c := range scenarios {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	return codes
}

// ParseNumber picks the scenario from a dialed number: "+1555SS" followed by
// at least 4 digits (the leading '+' is optional). ok is false for a number
// outside the table; the caller then plays unknownScenario.
func ParseNumber(number string) (Scenario, bool) {
	n := strings.TrimSpace(number)
	n = strings.TrimPrefix(n, "+")
	if !strings.HasPrefix(n, "1555") {
		return unknownScenario, false
	}
	rest := n[4:]
	if len(rest) < 2+4 {
		return unknownScenario, false
	}
	for _, r := range rest {
		if r < '0' || r > '9' {
			return unknownScenario, false
		}
	}
	s, ok := scenarios[rest[:2]]
	if !ok {
		return unknownScenario, false
	}
	return s, true
}

// ScenarioByName finds a scenario by its name (used by tests and docs).
func ScenarioByName(name string) (Scenario, bool) {
	for _, s := range scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// Quirk switches: livekit-sip bugs users reported (SIP_FACTS.md "Known quirks").
const (
	QuirkActiveBeforeAnswer   = "active_before_answer"
	QuirkSkipRinging          = "skip_ringing"
	QuirkNoHangupStatus       = "no_hangup_status"
	QuirkMissingReason        = "missing_reason"
	QuirkTrunkFailureReason   = "trunk_failure_reason"
	QuirkStatusAfterLeaveRace = "status_after_leave_race"
)

var knownQuirks = []string{
	QuirkActiveBeforeAnswer, QuirkSkipRinging, QuirkNoHangupStatus,
	QuirkMissingReason, QuirkTrunkFailureReason, QuirkStatusAfterLeaveRace,
}

// Quirks is a set of quirk switches.
type Quirks map[string]bool

// ParseQuirks reads a comma (or space) separated list. Unknown names are an error.
func ParseQuirks(s string) (Quirks, error) {
	q := Quirks{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == ';' }) {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		if !slices.Contains(knownQuirks, f) {
			return nil, fmt.Errorf("unknown quirk %q (known: %s)", f, strings.Join(knownQuirks, ", "))
		}
		q[f] = true
	}
	return q, nil
}

// QuirksFromList validates a list (control API).
func QuirksFromList(list []string) (Quirks, error) {
	return ParseQuirks(strings.Join(list, ","))
}

// Has reports whether a quirk is on.
func (q Quirks) Has(name string) bool { return q[name] }

// List returns the quirks sorted, never nil (for JSON).
func (q Quirks) List() []string {
	out := []string{}
	for k, on := range q {
		if on {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Merge returns the union of two sets.
func (q Quirks) Merge(o Quirks) Quirks {
	out := Quirks{}
	for k, v := range q {
		out[k] = v
	}
	for k, v := range o {
		out[k] = v
	}
	return out
}

// Defaults are the simulator-wide defaults set by flags.
type Defaults struct {
	Ring   time.Duration
	Talk   time.Duration
	Quirks Quirks
}

// CallOptions are the effective per-call options.
type CallOptions struct {
	// PDD is the post-dial delay: from the INVITE's 100 Trying to the 18x. Carriers
	// take 1 to 3 s; -1 means the loopback round trip (the default).
	PDD       time.Duration
	Ring      time.Duration
	Talk      time.Duration
	Quirks    Quirks
	RaceOrder string // status_after_leave_race: "leave_first", "status_first" or "" (random)
}

// Header names read from CreateSIPParticipantRequest.headers (case-insensitive).
const (
	HeaderPDD    = "X-Sim-PDD"
	HeaderRing   = "X-Sim-Ring"
	HeaderTalk   = "X-Sim-Talk"
	HeaderQuirks = "X-Sim-Quirks"
	HeaderRace   = "X-Sim-Race"
)

func headerValue(headers map[string]string, name string) (string, bool) {
	for k, v := range headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// ParseSeconds reads a duration given in (fractional) seconds.
func ParseSeconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 || f > 86400 {
		return 0, fmt.Errorf("invalid seconds %q", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// OptionsFromHeaders combines the flag defaults, the scenario's own default and
// the request's X-Sim-* headers (headers win). Bad header values are errors.
func OptionsFromHeaders(sc Scenario, d Defaults, headers map[string]string) (CallOptions, error) {
	o := CallOptions{PDD: -1, Ring: d.Ring, Talk: d.Talk, Quirks: d.Quirks.Merge(nil)}
	if v, ok := headerValue(headers, HeaderPDD); ok {
		pdd, err := ParseSeconds(v)
		if err != nil {
			return o, fmt.Errorf("%s: %w", HeaderPDD, err)
		}
		o.PDD = pdd
	}
	if sc.DefaultRing > 0 {
		o.Ring = sc.DefaultRing
	}
	if v, ok := headerValue(headers, HeaderRing); ok {
		r, err := ParseSeconds(v)
		if err != nil {
			return o, fmt.Errorf("%s: %w", HeaderRing, err)
		}
		o.Ring = r
	}
	if v, ok := headerValue(headers, HeaderTalk); ok {
		t, err := ParseSeconds(v)
		if err != nil {
			return o, fmt.Errorf("%s: %w", HeaderTalk, err)
		}
		o.Talk = t
	}
	if v, ok := headerValue(headers, HeaderQuirks); ok {
		q, err := ParseQuirks(v)
		if err != nil {
			return o, fmt.Errorf("%s: %w", HeaderQuirks, err)
		}
		o.Quirks = o.Quirks.Merge(q)
	}
	if v, ok := headerValue(headers, HeaderRace); ok {
		v = strings.ToLower(strings.TrimSpace(v))
		switch v {
		case "leave_first", "status_first", "":
			o.RaceOrder = v
		default:
			return o, fmt.Errorf("%s: want leave_first or status_first, got %q", HeaderRace, v)
		}
	}
	return o, nil
}

// SIP reason phrases for the codes the simulator uses.
var reasonPhrases = map[int]string{
	100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
	401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
	480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated",
	500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable", 603: "Decline",
}
