package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/health"
)

//go:embed default.hcl
var defaultConfig []byte

// shutdownGrace bounds how long SIGTERM waits for transactions in flight.
const shutdownGrace = 5 * time.Minute

func serveMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded demo configuration)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var cfg *config
	var err error
	if *path == "" {
		cfg, err = loadConfig("default.hcl (embedded)", defaultConfig, stderr)
		if cfg != nil {
			cfg.baseDir = "."
		}
	} else {
		cfg, err = loadConfigFile(*path, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "mailgate:", err)
		return 1
	}
	logger := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, logger, stdout, nil); err != nil {
		logger.Error("mailgate stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	format := "text"
	if l := cfg.file.Log; l != nil {
		if l.Format != "" {
			format = l.Format
		}
		switch l.Level {
		case "debug":
			opts.Level = slog.LevelDebug
		case "warn":
			opts.Level = slog.LevelWarn
		case "error":
			opts.Level = slog.LevelError
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve wires the configured pieces together and runs until ctx ends,
// then drains. SIGHUP reloads certificates, keys, users and policies.
// ready, when not nil, is called once every socket is bound, with the bound
// address of each listener by name (and of the metrics server as
// "metrics"): port 0 in the configuration picks a free port.
func serve(ctx context.Context, cfg *config, logger *slog.Logger, stdout io.Writer, ready func(map[string]string)) error {
	w, err := wire(cfg, logger)
	if err != nil {
		return err
	}
	defer w.close()
	metricsAddr := ""
	var checker *health.Checker // nil without a metrics block
	var listening atomic.Bool
	if mb := cfg.file.Metrics; mb != nil {
		var stop func()
		metricsAddr, checker, stop, err = serveMetrics(mb, w, &listening)
		if err != nil {
			return err
		}
		defer stop()
		logger.Info("metrics", "address", metricsAddr, "path", "/metrics")
	}
	srv, err := proxy.New(cfg.proxy, w.deps)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	listening.Store(true)
	if w.demo != nil {
		w.demo.setOutput(stdout)
		w.demo.announce(stdout, srv.Addrs())
	}
	if ready != nil {
		addrs := srv.Addrs()
		if metricsAddr != "" {
			addrs["metrics"] = metricsAddr
		}
		ready(addrs)
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			w.reload(logger)
		}
	}()

	if w.policy != nil {
		go w.policy.Watch(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	select {
	case err := <-errc:
		if err != nil {
			return err
		}
	case <-ctx.Done():
	}
	if checker != nil {
		// Out of the load balancer's pool first (/readyz 503), then
		// close the listeners once its health check has noticed.
		checker.Drain()
		if d := cfg.file.Metrics.shutdownDelay(); d > 0 {
			// A second SIGTERM or SIGINT cuts the delay short.
			again := make(chan os.Signal, 1)
			signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
			logger.Info("shutting down: not ready, listeners close after shutdown_delay", "shutdown_delay", d.String())
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-again:
				t.Stop()
				logger.Info("shutting down: second signal, closing the listeners now")
			}
			signal.Stop(again)
		}
	}
	logger.Info("shutting down: finishing transactions in flight")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	logger.Info("stopped")
	return nil
}

// serveMetrics opens the metrics listener: /metrics, /healthz, /readyz
// (listening says whether the SMTP listeners are bound) and, with quotas
// in memory, /quota. It starts the readiness pollers; stop ends them and
// closes the listener.
func serveMetrics(mb *metricsBlock, w *wiring, listening *atomic.Bool) (addr string, _ *health.Checker, stop func(), _ error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w.deps.Metrics = proxy.NewMetrics(reg)
	if w.policy != nil {
		reg.MustRegister(w.policy.Collector()) // shadow disagreements, decision log drops
	}
	ln, err := net.Listen("tcp", mb.Address)
	if err != nil {
		return "", nil, nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	checker := health.New(health.Check{Name: "listeners", Ready: func() error {
		if !listening.Load() {
			return errors.New("not bound yet")
		}
		return nil
	}})
	checker.Add(w.ready...)
	checker.Register(mux)
	if w.quotas != nil {
		qh := quotaHandler(w.policy, w.quotas)
		mux.Handle("/quota", qh)
		mux.Handle("/quota/reset", qh)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	var pollers sync.WaitGroup
	for _, p := range w.pollers {
		pollers.Go(func() { p.Run(ctx) })
	}
	stop = func() {
		hs.Close()
		cancel()
		pollers.Wait() // before w.close closes what they probe
	}
	return ln.Addr().String(), checker, stop, nil
}
