package main

import (
	"testing"
	"time"
)

func TestParseNumberPicksTheScenarioFromSS(t *testing.T) {
	cases := map[string]string{
		"+15550012345":     "answer_callee_hangup",
		"+155501987654321": "answer_wait",
		"+15550200001":     "busy",
		"+15550300001":     "decline",
		"+15550400001":     "forbidden",
		"+15550500001":     "not_found",
		"+15550600001":     "unavailable",
		"+15550700001":     "server_error",
		"+15550800001":     "early_media",
		"+15550900001":     "no_answer",
		"+15551000001":     "slow_answer",
		"+15551100001":     "answer_immediately",
		"+15551200001":     "server_error_500",
		"15550200001":      "busy", // no '+'
	}
	for number, want := range cases {
		sc, ok := ParseNumber(number)
		if !ok || sc.Name != want {
			t.Errorf("ParseNumber(%q) = %q, %v; want %q", number, sc.Name, ok, want)
		}
	}
}

func TestNumbersOutsideTheTableAreNotFound(t *testing.T) {
	for _, number := range []string{"+15559900001", "+155502001", "+15550", "+14155550100", "+1555020000a", "", "sip:alice"} {
		sc, ok := ParseNumber(number)
		if ok {
			t.Errorf("ParseNumber(%q) accepted as %q", number, sc.Name)
		}
		if sc.FinalCode != 404 || !sc.BeforePublish {
			t.Errorf("ParseNumber(%q) plays %+v, want a 404 before publishing", number, sc)
		}
	}
}

func TestEveryScenarioHasItsCodeAndAFinalReason(t *testing.T) {
	if len(ScenarioCodes()) != 13 {
		t.Fatalf("want 13 scenarios, got %v", ScenarioCodes())
	}
	for _, code := range ScenarioCodes() {
		sc := scenarios[code]
		if sc.Code != code {
			t.Errorf("scenario %s has code %q", sc.Name, sc.Code)
		}
		if sc.FinalCode != 0 && sc.FinalReason == "" {
			t.Errorf("scenario %s has no reason phrase", sc.Name)
		}
		if got, ok := ScenarioByName(sc.Name); !ok || got.Code != code {
			t.Errorf("ScenarioByName(%q) = %v, %v", sc.Name, got.Code, ok)
		}
	}
}

func TestHeadersOverrideFlagDefaults(t *testing.T) {
	d := Defaults{Ring: time.Second, Talk: 3 * time.Second, Quirks: Quirks{QuirkSkipRinging: true}}
	sc, _ := ParseNumber("+15550012345")
	o, err := OptionsFromHeaders(sc, d, map[string]string{
		"x-sim-ring": "2.5", "X-SIM-TALK": "0", "X-Sim-Quirks": "no_hangup_status, missing_reason", "X-Sim-Race": "leave_first",
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.Ring != 2500*time.Millisecond || o.Talk != 0 {
		t.Errorf("ring %v talk %v", o.Ring, o.Talk)
	}
	want := []string{"missing_reason", "no_hangup_status", "skip_ringing"}
	if got := o.Quirks.List(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("quirks %v, want %v", got, want)
	}
	if o.RaceOrder != "leave_first" {
		t.Errorf("race order %q", o.RaceOrder)
	}
	// The defaults were not changed by the merge.
	if len(d.Quirks) != 1 {
		t.Errorf("defaults mutated: %v", d.Quirks)
	}
}

func TestDefaultsApplyWithoutHeaders(t *testing.T) {
	d := Defaults{Ring: time.Second, Talk: 3 * time.Second, Quirks: Quirks{}}
	sc, _ := ParseNumber("+15550212345")
	o, err := OptionsFromHeaders(sc, d, nil)
	if err != nil || o.Ring != time.Second || o.Talk != 3*time.Second || len(o.Quirks.List()) != 0 {
		t.Errorf("got %+v, %v", o, err)
	}
}

func TestSlowAnswerRingsTwentySecondsUnlessTold(t *testing.T) {
	d := Defaults{Ring: time.Second, Talk: 3 * time.Second}
	sc, _ := ParseNumber("+15551012345")
	o, _ := OptionsFromHeaders(sc, d, nil)
	if o.Ring != 20*time.Second {
		t.Errorf("slow_answer rings %v", o.Ring)
	}
	o, _ = OptionsFromHeaders(sc, d, map[string]string{"X-Sim-Ring": "4"})
	if o.Ring != 4*time.Second {
		t.Errorf("slow_answer with X-Sim-Ring rings %v", o.Ring)
	}
}

func TestPostDialDelayIsTheRoundTripUnlessTold(t *testing.T) {
	sc, _ := ParseNumber("+15550012345")
	o, _ := OptionsFromHeaders(sc, Defaults{}, nil)
	if o.PDD != -1 {
		t.Errorf("default PDD %v, want -1 (the loopback round trip)", o.PDD)
	}
	o, _ = OptionsFromHeaders(sc, Defaults{}, map[string]string{"x-sim-pdd": "1.5"})
	if o.PDD != 1500*time.Millisecond {
		t.Errorf("X-Sim-PDD 1.5 gave %v", o.PDD)
	}
}

func TestBadHeaderValuesAreRejected(t *testing.T) {
	sc, _ := ParseNumber("+15550012345")
	for _, h := range []map[string]string{
		{"X-Sim-Ring": "soon"},
		{"X-Sim-PDD": "-2"},
		{"X-Sim-Talk": "-1"},
		{"X-Sim-Quirks": "active_before_answer,made_up"},
		{"X-Sim-Race": "sideways"},
	} {
		if _, err := OptionsFromHeaders(sc, Defaults{}, h); err == nil {
			t.Errorf("headers %v accepted", h)
		}
	}
}

func TestParseQuirksKnowsTheSixSwitches(t *testing.T) {
	q, err := ParseQuirks("active_before_answer,skip_ringing;no_hangup_status missing_reason,trunk_failure_reason,status_after_leave_race,")
	if err != nil {
		t.Fatal(err)
	}
	if len(q.List()) != 6 {
		t.Errorf("got %v", q.List())
	}
	if q, err := ParseQuirks(""); err != nil || len(q.List()) != 0 {
		t.Errorf("empty list: %v %v", q, err)
	}
}
