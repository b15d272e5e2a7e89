package main

// The SIP participant's room connection, with server-sdk-go v2: join with the
// call's attributes, publish one Opus track, set attributes, subscribe to
// audio (inbound answer trigger), and leave with a reason or abruptly.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"

	"github.com/livekit/protocol/livekit"
	protoLogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

// fullInterceptors keeps server-sdk-go's default RTP/RTCP interceptors
// (NACK, RTCP reports, TWCC). Off by default: they cost a timer per peer
// connection every second and change nothing a room observer sees.
var fullInterceptors = false

// singlePC joins in server-sdk-go's single peer connection mode.
var singlePC = false

// sdkLogger is the logger handed to server-sdk-go (quiet by default).
var sdkLogger protoLogger.Logger = protoLogger.GetDiscardLogger()

// --- signal connection capture, for the missing_reason quirk ---------------

type connSinkKey struct{}

// connSink receives the signal connection(s) a room dials, so the connection
// can be cut without a LeaveRequest. Once dead it refuses new dials, so the
// SDK cannot resume the session after the cut.
type connSink struct {
	mu    sync.Mutex
	conns []net.Conn
	dead  bool
}

var errSinkDead = errors.New("sipsim: connection deliberately cut")

func (s *connSink) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

// cut closes every captured connection with a TCP reset and returns how many.
func (s *connSink) cut() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dead = true
	for _, c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	n := len(s.conns)
	s.conns = nil
	return n
}

// installDialHook makes the websocket dialer report connections to the
// connSink found in the dial context (server-sdk-go dials the signal
// connection with the join context).
func installDialHook() {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	websocket.DefaultDialer.Proxy = nil
	websocket.DefaultDialer.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		sink, _ := ctx.Value(connSinkKey{}).(*connSink)
		if sink != nil {
			sink.mu.Lock()
			dead := sink.dead
			sink.mu.Unlock()
			if dead {
				return nil, errSinkDead
			}
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if sink != nil && !sink.add(c) {
			_ = c.Close()
			return nil, errSinkDead
		}
		return c, nil
	}
}

// --- the room connection ---------------------------------------------------

// roomConn is one SIP participant in a room.
type roomConn struct {
	log  *slog.Logger
	room *lksdk.Room
	sink *connSink

	identity string

	track     *lksdk.LocalTrack
	published chan struct{} // closed once the track is bound (negotiated)
	pubOnce   sync.Once
	primed    chan struct{} // closed once media went out on the connected publisher

	disconnected chan struct{} // closed when the server ends our session
	discOnce     sync.Once
	leaving      atomic.Bool // we sent a leave (or cut the connection)

	active chan struct{} // closed once livekit-server sees the participant ACTIVE (see WatchActive)

	subscribeOn atomic.Bool
	subscribed  chan struct{} // closed once we subscribed to an audio track (or a 2nd SIP participant joined)
	subOnce     sync.Once
}

// joinRoom connects with the token; attrs are sent with the join (as
// livekit-sip does with WithExtraAttributes) on top of the token's.
func joinRoom(ctx context.Context, log *slog.Logger, wsURL, token string, attrs map[string]string) (*roomConn, error) {
	rc := &roomConn{
		log:          log,
		sink:         &connSink{},
		published:    make(chan struct{}),
		primed:       make(chan struct{}),
		disconnected: make(chan struct{}),
		subscribed:   make(chan struct{}),
		active:       make(chan struct{}),
	}
	cb := &lksdk.RoomCallback{
		OnDisconnected: func() {
			rc.discOnce.Do(func() { close(rc.disconnected) })
		},
		OnParticipantConnected: func(rp *lksdk.RemoteParticipant) {
			if !rc.subscribeOn.Load() {
				return
			}
			rc.participantJoined(rp)
		},
		ParticipantCallback: lksdk.ParticipantCallback{
			OnTrackPublished: func(pub *lksdk.RemoteTrackPublication, rp *lksdk.RemoteParticipant) {
				if !rc.subscribeOn.Load() {
					return
				}
				rc.subscribeTo(pub)
			},
			OnTrackSubscribed: func(track *webrtc.TrackRemote, pub *lksdk.RemoteTrackPublication, rp *lksdk.RemoteParticipant) {
				// Drain and drop the room's audio: no media is processed.
				go func() {
					buf := make([]byte, 1500)
					for {
						if _, _, err := track.Read(buf); err != nil {
							return
						}
					}
				}()
			},
		},
	}
	room := lksdk.NewRoom(cb)
	room.SetLogger(sdkLogger)
	rc.room = room
	// The SDK keeps the join context for later reconnects: detach it from the
	// caller's (RPC or HTTP request) lifetime; the SDK bounds the join itself.
	jctx := context.WithValue(context.WithoutCancel(ctx), connSinkKey{}, rc.sink)
	opts := []lksdk.ConnectOption{
		lksdk.WithAutoSubscribe(false),
		lksdk.WithExtraAttributes(attrs),
		lksdk.WithLogger(sdkLogger),
	}
	if !fullInterceptors {
		// A non-nil empty list is what makes server-sdk-go skip its defaults.
		opts = append(opts, lksdk.WithInterceptors([]interceptor.Factory{}), lksdk.WithIncludeDefaultInterceptors(false))
	}
	if singlePC {
		opts = append(opts, lksdk.WithSinglePeerConnection())
	}
	err := room.JoinWithContextAndToken(jctx, wsURL, token, opts...)
	if err != nil {
		return nil, err
	}
	rc.identity = room.LocalParticipant.Identity()
	return rc, nil
}

// --- connection established, as livekit-server sees it -------------------

// The SDK's join returns once the primary transport's ICE is connected, but
// livekit-server makes the participant ACTIVE (and sends the
// participant_joined webhook with the attributes it has then) only when its
// side of the primary peer connection is connected, DTLS included. A call
// that sets ringing, or fails and leaves, before that shows ringing in the
// joined webhook, or participant_connection_aborted instead of joined + left.
// livekit-sip sends its INVITE only after its room connection is up.

const (
	activePoll        = 2 * time.Millisecond
	activeAPIPoll     = 5 * time.Millisecond
	activeWaitTimeout = 10 * time.Second
)

// Active is closed once the participant is ACTIVE on livekit-server (or
// waiting for it gave up: see WatchActive).
func (rc *roomConn) Active() <-chan struct{} { return rc.active }

// WatchActive closes Active() once the primary peer connection (subscriber,
// or publisher with --single-pc) is connected on our side and, with a
// RoomService client, livekit-server reports the participant ACTIVE. It gives
// up (and closes Active() anyway) after activeWaitTimeout, or at once when
// the session ends.
func (rc *roomConn) WatchActive(api *lksdk.RoomServiceClient, roomName string) {
	defer close(rc.active)
	deadline := time.Now().Add(activeWaitTimeout)
	stopped := func() bool {
		select {
		case <-rc.disconnected:
			return true
		default:
		}
		return rc.leaving.Load() || time.Now().After(deadline)
	}
	pause := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-rc.disconnected:
			return false
		}
	}
	// 1. our side of the primary peer connection (ICE and DTLS) is connected
	for {
		var pc *webrtc.PeerConnection
		if singlePC {
			pc = rc.room.LocalParticipant.GetPublisherPeerConnection()
		} else {
			pc = rc.room.LocalParticipant.GetSubscriberPeerConnection()
		}
		if pc != nil && pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
			break
		}
		if stopped() || !pause(activePoll) {
			if !rc.leaving.Load() {
				rc.log.Warn("primary peer connection not connected; the far end starts anyway")
			}
			return
		}
	}
	// 2. livekit-server has the participant ACTIVE (usually at once: the
	// server finishes its DTLS handshake before ours)
	if api == nil {
		return
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := api.GetParticipant(ctx, &livekit.RoomParticipantIdentity{Room: roomName, Identity: rc.identity})
		cancel()
		if err == nil && p.State == livekit.ParticipantInfo_ACTIVE {
			return
		}
		if err == nil && p.State == livekit.ParticipantInfo_DISCONNECTED {
			return
		}
		if stopped() || !pause(activeAPIPoll) {
			if !rc.leaving.Load() {
				rc.log.Warn("participant not seen ACTIVE by the server; the far end starts anyway", "error", err)
			}
			return
		}
	}
}

// SID is the participant's sid.
func (rc *roomConn) SID() string { return rc.room.LocalParticipant.SID() }

// SetAttributes sends an attribute update (broadcast even when nothing changes).
func (rc *roomConn) SetAttributes(attrs map[string]string) {
	if rc.leaving.Load() {
		return
	}
	rc.room.LocalParticipant.SetAttributes(attrs)
}

// Publish publishes the participant's audio track (Opus, named after the
// identity, as livekit-sip does). It returns once the server acknowledged the
// track; Published() is closed when the track is negotiated and primed.
func (rc *roomConn) Publish() error {
	track, err := lksdk.NewLocalSampleTrack(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
	})
	if err != nil {
		return err
	}
	track.OnBind(func() {
		rc.pubOnce.Do(func() { close(rc.published) })
	})
	rc.track = track
	_, err = rc.room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
		Name: rc.room.LocalParticipant.Identity(),
	})
	if err != nil {
		return err
	}
	go rc.primeTrack()
	return nil
}

// primeTrack writes Opus silence until the publisher connection is up and a
// few frames went through: livekit-server shows the track as published only
// once media arrives. Then the track stays silent (like Opus DTX).
func (rc *roomConn) primeTrack() {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	sent := 0
	defer close(rc.primed)
	for sent < primeFrames {
		select {
		case <-tick.C:
		case <-deadline:
			return
		case <-rc.disconnected:
			return
		}
		if rc.leaving.Load() {
			return
		}
		if rc.track.IsBound() {
			_ = rc.track.WriteSample(media.Sample{Data: opusSilence, Duration: 20 * time.Millisecond}, nil)
		}
		if pc := rc.room.LocalParticipant.GetPublisherPeerConnection(); pc != nil &&
			pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
			sent++
		}
	}
}

// opusSilence is one 20 ms Opus frame of silence.
var opusSilence = []byte{0xf8, 0xff, 0xfe}

// primeFrames is how many silence frames are written once the publisher
// peer connection is connected.
var primeFrames = 5

// Published is closed once the track is negotiated.
func (rc *roomConn) Published() <-chan struct{} { return rc.published }

// Primed is closed once the track's first frames went out on the connected
// publisher connection (the server shows the track from then on), or when
// priming gave up.
func (rc *roomConn) Primed() <-chan struct{} { return rc.primed }

// Disconnected is closed when the server ended the session (removed,
// room deleted, connection lost...).
func (rc *roomConn) Disconnected() <-chan struct{} { return rc.disconnected }

// ServerReason is the reason the server gave when it disconnected us.
func (rc *roomConn) ServerReason() livekit.DisconnectReason { return rc.room.DisconnectReason() }

// Leave sends a LeaveRequest with the reason and closes the connection.
func (rc *roomConn) Leave(reason livekit.DisconnectReason) {
	if !rc.leaving.CompareAndSwap(false, true) {
		return
	}
	rc.room.DisconnectWithReason(reason)
}

// LeaveAbrupt cuts the signal connection with a TCP reset, then tears the
// peer connections down: the server gets no LeaveRequest.
func (rc *roomConn) LeaveAbrupt() int {
	if !rc.leaving.CompareAndSwap(false, true) {
		return 0
	}
	n := rc.sink.cut()
	// The leave cannot be sent on the cut connection; this only closes the
	// peer connections and the SDK's state.
	rc.room.DisconnectWithReason(livekit.DisconnectReason_UNKNOWN_REASON)
	return n
}

// --- subscribing (livekit-sip answers inbound calls once subscribed) --------

// Subscribe starts subscribing to the audio of everyone in the room, now and later.
func (rc *roomConn) Subscribe() {
	rc.subscribeOn.Store(true)
	for _, rp := range rc.room.GetRemoteParticipants() {
		rc.participantJoined(rp)
		for _, pub := range rp.TrackPublications() {
			if rpub, ok := pub.(*lksdk.RemoteTrackPublication); ok {
				rc.subscribeTo(rpub)
			}
		}
	}
}

// Subscribed is closed once the participant subscribed to an audio track, or
// another SIP participant is in the room (livekit-sip does the same to avoid
// two SIP legs waiting for each other).
func (rc *roomConn) Subscribed() <-chan struct{} { return rc.subscribed }

func (rc *roomConn) participantJoined(rp *lksdk.RemoteParticipant) {
	if rp.Kind() == lksdk.ParticipantSIP {
		rc.subOnce.Do(func() { close(rc.subscribed) })
	}
}

func (rc *roomConn) subscribeTo(pub *lksdk.RemoteTrackPublication) {
	if pub.Kind() != lksdk.TrackKindAudio {
		return
	}
	if err := pub.SetSubscribed(true); err != nil {
		rc.log.Debug("cannot subscribe", "track", pub.SID(), "error", err)
		return
	}
	rc.subOnce.Do(func() { close(rc.subscribed) })
}
