// Command sipsim stands in for livekit-sip: it registers as the SIP service
// on livekit-server's redis (psrpc), places the SIP participants in rooms and
// plays the far end of each call from a table of test numbers. See
// docs/simulator.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	protoLogger "github.com/livekit/protocol/logger"
	"github.com/livekit/protocol/rpc"
	"github.com/livekit/psrpc"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	os.Exit(run())
}

func run() int {
	var (
		redisAddr   = flag.String("redis", "", "redis address host:port livekit-server uses (required)")
		redisPass   = flag.String("redis-password", envOr("SIPSIM_REDIS_PASSWORD", ""), "redis password")
		controlAddr = flag.String("control", "", "control API listen address host:port (required)")
		ledgerPath  = flag.String("ledger", "", "ledger file, JSON lines (required; appended to)")
		wsURL       = flag.String("ws-url", envOr("LIVEKIT_URL", ""), "livekit-server ws url for joining rooms (env LIVEKIT_URL)")
		apiKey      = flag.String("api-key", envOr("LIVEKIT_API_KEY", ""), "API key to sign participant tokens (env LIVEKIT_API_KEY)")
		apiSecret   = flag.String("api-secret", envOr("LIVEKIT_API_SECRET", ""), "API secret (env LIVEKIT_API_SECRET)")
		logLevel    = flag.String("log-level", "info", "debug, info, warn or error")
		ring        = flag.Float64("ring", 1, "default ring time in seconds before the far end answers or fails")
		talk        = flag.Float64("talk", 3, "default talk time in seconds before the far end hangs up")
		quirks      = flag.String("quirks", "", "default quirk switches, comma separated")
		shutdownTO  = flag.Duration("shutdown-timeout", 20*time.Second, "how long to wait for calls to end on SIGTERM")
		primeFlag   = flag.Int("prime-frames", 5, "Opus silence frames written once the publisher connection is up")
		singlePCF   = flag.Bool("single-pc", false, "join with one peer connection (server-sdk-go single peer connection mode)")
		fullIntc    = flag.Bool("rtcp", false, "keep server-sdk-go's default RTP/RTCP interceptors (costly at scale)")
	)
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "sipsim: bad --log-level %q\n", *logLevel)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *redisAddr == "" || *controlAddr == "" || *ledgerPath == "" {
		fmt.Fprintln(os.Stderr, "sipsim: --redis, --control and --ledger are required")
		flag.Usage()
		return 2
	}
	q, err := ParseQuirks(*quirks)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sipsim: --quirks: %v\n", err)
		return 2
	}
	raiseFileLimit(log)
	if os.Getenv("GOGC") == "" {
		// Joins allocate a lot (SDP parsing); memory is cheaper than GC here.
		debug.SetGCPercent(400)
	}
	primeFrames = *primeFlag
	fullInterceptors = *fullIntc
	singlePC = *singlePCF

	// The SDK and psrpc log through protocol's logger: quiet unless debugging.
	// pion warns about every ICE pair it cannot use yet: keep it to errors.
	sdkLevel := "error"
	if level <= slog.LevelDebug {
		sdkLevel = "info"
	}
	if zl, err := protoLogger.NewZapLogger(&protoLogger.Config{Level: sdkLevel, JSON: true}); err == nil {
		sdkLogger = zl
		lksdk.SetLogger(zl)
		protoLogger.SetLogger(zl, "sipsim")
	}
	installDialHook()

	ledger, err := OpenLedger(*ledgerPath)
	if err != nil {
		log.Error("cannot open ledger", "error", err)
		return 1
	}
	defer ledger.Close()

	ln, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Error("cannot listen on control address", "addr", *controlAddr, "error", err)
		return 1
	}

	rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{*redisAddr}, Password: *redisPass})
	pingCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = rc.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		log.Error("cannot reach redis", "addr", *redisAddr, "error", err)
		return 1
	}
	bus := psrpc.NewRedisMessageBus(rc)
	ioClient, err := rpc.NewIOInfoClient(bus)
	if err != nil {
		log.Error("cannot create IOInfo client", "error", err)
		return 1
	}

	s := &Service{
		log:       log,
		ledger:    ledger,
		defaults:  Defaults{Ring: secs(*ring), Talk: secs(*talk), Quirks: q},
		wsURL:     *wsURL,
		apiKey:    *apiKey,
		apiSecret: *apiSecret,
		io:        ioClient,
		stopCh:    make(chan struct{}),
		calls:     map[string]*activeCall{},
	}
	if *wsURL != "" && *apiKey != "" && *apiSecret != "" {
		s.roomClient = lksdk.NewRoomServiceClient(httpURL(*wsURL), *apiKey, *apiSecret)
	}
	if *apiKey == "" || *apiSecret == "" || *wsURL == "" {
		log.Warn("no --ws-url/--api-key/--api-secret: calls need a token and ws url in the request, which livekit-server 1.13.5 does not send")
	}

	go s.collectClosedSockets(30 * time.Second)

	httpSrv := &http.Server{Handler: controlHandler(s), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API stopped", "error", err)
		}
	}()

	if err := s.Register(bus); err != nil {
		log.Error("cannot register as the SIP service", "error", err)
		return 1
	}
	log.Info("sipsim ready", "redis", *redisAddr, "control", ln.Addr().String(), "ledger", *ledgerPath,
		"ws_url", *wsURL, "scenarios", strings.Join(ScenarioCodes(), ","))

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	got := <-sig
	log.Info("shutting down", "signal", got.String(), "calls", s.activeCount())
	go func() {
		<-sig
		log.Warn("second signal: exiting now")
		ledger.Close()
		os.Exit(1)
	}()
	s.Shutdown(*shutdownTO)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = httpSrv.Shutdown(ctx)
	cancel()
	_ = rc.Close()
	log.Info("stopped")
	return 0
}

// raiseFileLimit lifts the open files limit: every call holds about 15
// sockets (two peer connections with a socket per interface, plus mDNS).
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	want := uint64(1 << 20)
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		// Raising the hard limit needs root (CAP_SYS_RESOURCE); fall back to it.
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return
		}
		want = lim.Max
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: lim.Max})
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	log.Debug("open files limit", "cur", lim.Cur, "max", lim.Max)
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
