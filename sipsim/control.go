package main

// The control API on --control: health, inbound calls, calls in progress,
// far-end hangup.

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"time"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string, sipCode int) {
	var code any
	if sipCode != 0 {
		code = sipCode
	}
	writeJSON(w, status, map[string]any{"error": msg, "sip_status_code": code})
}

// controlHandler builds the control API's routes.
func controlHandler(s *Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.registered.Load() || s.stopping() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not registered")
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.listCalls())
	})
	mux.HandleFunc("POST /inbound", func(w http.ResponseWriter, r *http.Request) {
		var req inboundRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad request body: "+err.Error(), 0)
			return
		}
		c, err := s.startInbound(r.Context(), req)
		if err != nil {
			var ref *inboundRefusal
			if errors.As(err, &ref) {
				writeError(w, ref.HTTPStatus, ref.Message, ref.SIPCode)
				return
			}
			writeError(w, http.StatusBadRequest, err.Error(), 0)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"call_id":              c.rec.callID,
			"room":                 c.rec.room,
			"participant_identity": c.rec.identity,
			"participant_sid":      c.rec.sid,
		})
	})
	mux.HandleFunc("POST /hangup", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			CallID string `json:"call_id"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.CallID == "" {
			writeError(w, http.StatusBadRequest, "want {\"call_id\": ...}", 0)
			return
		}
		c := s.getCall(req.CallID)
		if c == nil {
			writeError(w, http.StatusNotFound, "no such call in progress", 0)
			return
		}
		c.ctl.Hangup()
		// Wait briefly so the caller sees the call end in /calls right after.
		select {
		case <-c.ctl.Done():
		case <-time.After(2 * time.Second):
		}
		writeJSON(w, http.StatusOK, map[string]any{"call_id": req.CallID, "ok": true})
	})
	// Go profiling, for benchmarks of the simulator itself.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
