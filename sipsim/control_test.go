package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func testService() *Service {
	return &Service{
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		ledger:   NewLedgerWriter(io.Discard),
		defaults: Defaults{Ring: time.Second, Talk: 3 * time.Second, Quirks: Quirks{}},
		stopCh:   make(chan struct{}),
		calls:    map[string]*activeCall{},
	}
}

func TestHealthzIsOKOnlyOnceRegistered(t *testing.T) {
	s := testService()
	srv := httptest.NewServer(controlHandler(s))
	defer srv.Close()
	get := func() (int, string) {
		res, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Errorf("before registration: %d", code)
	}
	s.registered.Store(true)
	if code, body := get(); code != http.StatusOK || body != "ok" {
		t.Errorf("registered: %d %q", code, body)
	}
	close(s.stopCh)
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Errorf("shutting down: %d", code)
	}
}

func postJSON(t *testing.T, url string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	res, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

func TestInboundRequestsAreValidatedBeforeAnyCall(t *testing.T) {
	s := testService()
	srv := httptest.NewServer(controlHandler(s))
	defer srv.Close()
	for _, body := range []map[string]any{
		{"from": "+15551230000", "to": "+15550000000", "scenario": "sing_a_song"},
		{"from": "+15551230000"},
		{"from": "+15551230000", "to": "+15550000000", "quirks": []string{"made_up"}},
		{"from": "+15551230000", "to": "+15550000000", "unknown_field": 1},
	} {
		code, out := postJSON(t, srv.URL+"/inbound", body)
		if code != http.StatusBadRequest || out["error"] == "" || out["sip_status_code"] != nil {
			t.Errorf("%v: %d %v", body, code, out)
		}
	}
}

func TestHangupOfAnUnknownCallIsNotFound(t *testing.T) {
	s := testService()
	srv := httptest.NewServer(controlHandler(s))
	defer srv.Close()
	if code, _ := postJSON(t, srv.URL+"/hangup", map[string]any{"call_id": "SCL_nope"}); code != http.StatusNotFound {
		t.Errorf("got %d", code)
	}
	if code, _ := postJSON(t, srv.URL+"/hangup", map[string]any{}); code != http.StatusBadRequest {
		t.Errorf("got %d", code)
	}
	res, err := http.Get(srv.URL + "/calls")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if string(bytes.TrimSpace(b)) != "[]" {
		t.Errorf("calls: %s", b)
	}
}
