package main

// Service: the simulator's SIP service as livekit-server sees it over psrpc,
// and the registry of calls in progress.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/livekit/protocol/rpc"
	"github.com/livekit/protocol/sip"
	"github.com/livekit/psrpc"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// callControl is what the control API can do with a call in progress.
type callControl interface {
	Hangup()
	Done() <-chan struct{}
}

type activeCall struct {
	rec *callRecord
	ctl callControl
}

// Service implements rpc.SIPInternalServerImpl.
type Service struct {
	log      *slog.Logger
	ledger   *Ledger
	defaults Defaults

	wsURL     string
	apiKey    string
	apiSecret string

	io  rpc.IOInfoClient
	srv rpc.SIPInternalServer

	roomClient *lksdk.RoomServiceClient

	registered atomic.Bool
	stopCh     chan struct{}
	stopOnce   sync.Once

	mu    sync.Mutex
	calls map[string]*activeCall

	endedSinceGC atomic.Int64
}

// collectClosedSockets runs a GC now and then after calls ended: some sockets
// of closed peer connections are only closed by their finalizers (pion), and
// with a large heap the GC may not run for a long time.
func (s *Service) collectClosedSockets(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stopCh:
			return
		case <-t.C:
			if s.endedSinceGC.Swap(0) >= 20 {
				runtime.GC()
			}
		}
	}
}

func (s *Service) stopping() bool {
	select {
	case <-s.stopCh:
		return true
	default:
		return false
	}
}

// CreateSIPParticipantAffinity: every simulator instance takes every call.
func (s *Service) CreateSIPParticipantAffinity(ctx context.Context, req *rpc.InternalCreateSIPParticipantRequest) float32 {
	if s.stopping() {
		return 0
	}
	return 0.5
}

// TransferSIPParticipant is not simulated.
func (s *Service) TransferSIPParticipant(ctx context.Context, req *rpc.InternalTransferSIPParticipantRequest) (*rpc.InternalTransferSIPParticipantResponse, error) {
	return nil, psrpc.NewErrorf(psrpc.Unimplemented, "sipsim: transfer is not simulated")
}

func (s *Service) addCall(id string, rec *callRecord, ctl callControl) {
	s.mu.Lock()
	s.calls[id] = &activeCall{rec: rec, ctl: ctl}
	s.mu.Unlock()
	if s.srv != nil {
		// As livekit-sip, accept TransferSIPParticipant for this call id.
		if err := s.srv.RegisterTransferSIPParticipantTopic(id); err != nil {
			s.log.Debug("cannot register transfer topic", "call_id", id, "error", err)
		}
	}
}

func (s *Service) removeCall(id string) {
	s.mu.Lock()
	_, ok := s.calls[id]
	delete(s.calls, id)
	s.mu.Unlock()
	s.endedSinceGC.Add(1)
	if ok && s.srv != nil {
		s.srv.DeregisterTransferSIPParticipantTopic(id)
	}
}

func (s *Service) getCall(id string) *activeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

// listCalls is the GET /calls view, oldest first.
func (s *Service) listCalls() []map[string]any {
	s.mu.Lock()
	list := make([]*activeCall, 0, len(s.calls))
	for _, c := range s.calls {
		list = append(list, c)
	}
	s.mu.Unlock()
	out := make([]map[string]any, 0, len(list))
	for _, c := range list {
		out = append(out, c.rec.snapshot())
	}
	sort.Slice(out, func(i, j int) bool {
		ti, _ := out[i]["t_start"].(float64)
		tj, _ := out[j]["t_start"].(float64)
		return ti < tj
	})
	return out
}

func (s *Service) activeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// credentials returns the ws url and token to join with. livekit-server
// 1.13.5 sends neither (it calls its own CreateSIPParticipantRequest with
// empty ones), so the simulator signs the token as livekit-sip does: kind
// SIP, join/publish/subscribe/data/update-own-metadata grants, 24 h, and only
// the SIP id attributes in the token; the rest come with the join.
func (s *Service) credentials(wsURL, token, room, identity, name, metadata string,
	attrs map[string]string, preset string, roomConf *livekit.RoomConfiguration) (string, string, error) {
	if wsURL == "" {
		wsURL = s.wsURL
	}
	if wsURL == "" {
		return "", "", psrpc.NewErrorf(psrpc.Internal, "sipsim: no ws url in the request and no --ws-url")
	}
	if token != "" {
		return wsURL, token, nil
	}
	if s.apiKey == "" || s.apiSecret == "" {
		return "", "", psrpc.NewErrorf(psrpc.Internal, "sipsim: no token in the request and no --api-key/--api-secret")
	}
	tokenAttrs := make(map[string]string, len(tokenAttrKeys))
	for _, k := range tokenAttrKeys {
		if v, ok := attrs[k]; ok {
			tokenAttrs[k] = v
		}
	}
	tok, err := sip.BuildSIPToken(sip.SIPTokenParams{
		APIKey:                s.apiKey,
		APISecret:             s.apiSecret,
		RoomName:              room,
		ParticipantIdentity:   identity,
		ParticipantName:       name,
		ParticipantMetadata:   metadata,
		ParticipantAttributes: tokenAttrs,
		RoomPreset:            preset,
		RoomConfig:            roomConf,
	})
	if err != nil {
		return "", "", psrpc.NewError(psrpc.Internal, err)
	}
	return wsURL, tok, nil
}

// httpURL turns the ws url into the server's HTTP url (RoomService).
func httpURL(ws string) string {
	u, err := url.Parse(ws)
	if err != nil {
		return ws
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	return strings.TrimSuffix(u.String(), "/")
}

// updateAttributesViaAPI sets attributes through RoomService.UpdateParticipant
// (status_after_leave_race).
func (s *Service) updateAttributesViaAPI(room, identity string, attrs map[string]string) error {
	if s.roomClient == nil {
		return errors.New("no --api-key/--api-secret/--ws-url for the RoomService")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.roomClient.UpdateParticipant(ctx, &livekit.UpdateParticipantRequest{
		Room: room, Identity: identity, Attributes: attrs,
	})
	return err
}

// Register registers the service on the bus.
func (s *Service) Register(bus psrpc.MessageBus) error {
	srv, err := rpc.NewSIPInternalServer(s, bus)
	if err != nil {
		return fmt.Errorf("NewSIPInternalServer: %w", err)
	}
	s.srv = srv
	// livekit-server calls CreateSIPParticipant on the empty topic (cluster id "").
	if err := srv.RegisterCreateSIPParticipantTopic(""); err != nil {
		srv.Kill()
		return fmt.Errorf("RegisterCreateSIPParticipantTopic: %w", err)
	}
	s.registered.Store(true)
	return nil
}

// Shutdown ends every call as livekit-sip's shutdown does (the status stays,
// the participant leaves), waits up to timeout for them, then closes the server.
func (s *Service) Shutdown(timeout time.Duration) {
	if s.srv != nil {
		s.srv.DeregisterCreateSIPParticipantTopic("")
	}
	s.stopOnce.Do(func() { close(s.stopCh) })
	// Every call sees stopCh and ends; wait for them (calls still joining
	// included: they are registered before they join).
	deadline := time.Now().Add(timeout)
	for s.activeCount() > 0 {
		if time.Now().After(deadline) {
			s.log.Warn("calls still running at shutdown timeout", "left", s.activeCount())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s.srv != nil {
		s.srv.Shutdown()
	}
	s.registered.Store(false)
}
