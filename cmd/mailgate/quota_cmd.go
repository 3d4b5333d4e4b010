package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/policy/quota"
)

// maxShownKeys bounds how many keys of one quota `quota show` lists.
const maxShownKeys = 1000

// newQuotaStore counts in Redis when the configuration has a redis block
// (every instance then shares the counters), else in this process. The
// Redis store batches commits and releases (quota.WithBatch): the caller
// must Close it before it closes rdb.
func newQuotaStore(cfg *config, rdb *redis.Client, logger *slog.Logger) quota.Store {
	if rdb != nil {
		batch := cfg.quotaBatch
		if batch == 0 {
			batch = quota.DefaultBatchInterval
		}
		return quota.NewRedis(rdb, redisPrefix(cfg.file.Redis), quota.WithBatch(batch), quota.WithLogger(logger))
	}
	return quota.NewMemory()
}

func redisPrefix(rb *redisBlock) string {
	if rb.KeyPrefix == "" {
		return "mailgate:"
	}
	return rb.KeyPrefix
}

// reloadQuotas re-reads the quota blocks of the configuration file (on
// SIGHUP). Only the quota blocks are taken from it; a file with errors
// keeps the quotas in force.
func reloadQuotas(path string, p *policy.Policy) error {
	c, err := loadConfigFile(path, io.Discard)
	if err != nil {
		return fmt.Errorf("quotas: %w", err)
	}
	if c.quotas == nil {
		return errors.New("quotas: the configuration has no quota blocks any more; restart to remove them all")
	}
	p.SetQuotas(c.quotas)
	return nil
}

// quotaMain implements `mailgate quota show|reset`. With a redis block the
// counters are read from Redis directly; otherwise from the running
// instance through its metrics listener (/quota), since the counters live
// in its memory.
func quotaMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "show" && args[0] != "reset") {
		fmt.Fprintln(stderr, "usage: mailgate quota show -config FILE [-quota NAME] [-key KEY]\n       mailgate quota reset -config FILE -quota NAME -key KEY")
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("quota "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (required)")
	name := fs.String("quota", "", "quota name (show: all quotas when empty)")
	key := fs.String("key", "", "key (show: every key with state when empty)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for Redis or the running instance")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *path == "" || (verb == "reset" && (*name == "" || *key == "")) {
		fmt.Fprintf(stderr, "mailgate quota %s: -config is required (and -quota and -key for reset)\n", verb)
		return 2
	}
	cfg, err := loadConfigFile(*path, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "mailgate quota:", err)
		return 1
	}
	if cfg.quotas == nil {
		fmt.Fprintf(stderr, "mailgate quota: %s has no quota blocks\n", *path)
		return 1
	}
	if *name != "" {
		if _, ok := cfg.quotas.Windows(*name); !ok {
			fmt.Fprintf(stderr, "mailgate quota: no quota %q in %s (have: %s)\n", *name, *path, strings.Join(cfg.quotas.Names(), ", "))
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch {
	case cfg.file.Redis != nil:
		rdb := newRedis(cfg.file.Redis)
		defer rdb.Close()
		store := quota.NewRedis(rdb, redisPrefix(cfg.file.Redis))
		if verb == "reset" {
			err = resetQuota(ctx, stdout, store, *name, *key)
		} else {
			err = writeLevels(ctx, stdout, store, cfg.quotas, *name, *key, time.Now())
		}
	case cfg.file.Metrics != nil:
		err = quotaOverHTTP(ctx, stdout, cfg.file.Metrics.Address, verb, *name, *key)
	default:
		err = errors.New("the counters live in the memory of the running instance, which serves them on its metrics listener: configure a metrics block (or a redis block)")
	}
	if err != nil {
		fmt.Fprintln(stderr, "mailgate quota:", err)
		return 1
	}
	return 0
}

func resetQuota(ctx context.Context, w io.Writer, store quota.Store, name, key string) error {
	if err := store.Reset(ctx, name, key); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s %s: reset\n", name, quoteKey(key))
	return nil
}

// writeLevels prints one line per quota, key, kind and window:
//
//	per-login alice@example.com messages 200/1h used=17 remaining=183
func writeLevels(ctx context.Context, w io.Writer, store quota.Store, qs *policy.Quotas, name, key string, now time.Time) error {
	names := qs.Names()
	if name != "" {
		names = []string{name}
	}
	for _, n := range names {
		ws, _ := qs.Windows(n)
		keys := []string{key}
		if key == "" {
			var err error
			if keys, err = store.Keys(ctx, n, maxShownKeys); err != nil {
				return err
			}
			sort.Strings(keys)
			if len(keys) == 0 {
				fmt.Fprintf(w, "%s: no counters\n", n)
			}
		}
		for _, k := range keys {
			for _, kind := range []quota.Kind{quota.Messages, quota.Recipients, quota.NewRecipients} {
				if len(ws[kind]) == 0 {
					continue
				}
				levels, err := store.Levels(ctx, now, quota.Counter{Quota: n, Key: k, Kind: kind}, ws[kind])
				if err != nil {
					return err
				}
				for _, l := range levels {
					fmt.Fprintf(w, "%s %s %s %s used=%d remaining=%d", n, quoteKey(k), kind,
						policy.FormatWindow(l.Window), l.Used, max(l.Window.Limit-l.Used, 0))
					if l.RetryAfter > 0 {
						fmt.Fprintf(w, " retry_in=%s", l.RetryAfter.Round(time.Second))
					}
					fmt.Fprintln(w)
				}
			}
		}
	}
	return nil
}

func quoteKey(k string) string {
	if k == "" || strings.ContainsAny(k, " \t\"\\") || !strconv.CanBackquote(k) {
		return strconv.Quote(k)
	}
	return k
}

// quotaHandler serves the running instance's counters on the metrics
// listener: GET /quota?quota=NAME&key=KEY (the `quota show` text) and POST
// /quota/reset?quota=NAME&key=KEY.
func quotaHandler(p *policy.Policy, store quota.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /quota", func(w http.ResponseWriter, r *http.Request) {
		qs := p.Quotas()
		name, key := r.URL.Query().Get("quota"), r.URL.Query().Get("key")
		if _, ok := qs.Windows(name); name != "" && !ok {
			http.Error(w, fmt.Sprintf("no quota %q", name), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := writeLevels(r.Context(), w, store, qs, name, key, time.Now()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /quota/reset", func(w http.ResponseWriter, r *http.Request) {
		name, key := r.URL.Query().Get("quota"), r.URL.Query().Get("key")
		if _, ok := p.Quotas().Windows(name); !ok || key == "" {
			http.Error(w, "quota and key are required and the quota must exist", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := resetQuota(r.Context(), w, store, name, key); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	return mux
}

func quotaOverHTTP(ctx context.Context, out io.Writer, addr, verb, name, key string) error {
	host, port, err := splitListen(addr)
	if err != nil {
		return err
	}
	q := url.Values{}
	if name != "" {
		q.Set("quota", name)
	}
	if key != "" {
		q.Set("key", key)
	}
	method, path := http.MethodGet, "/quota"
	if verb == "reset" {
		method, path = http.MethodPost, "/quota/reset"
	}
	u := "http://" + host + ":" + port + path + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("the running instance's metrics listener (%s): %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	}
	_, err = io.Copy(out, resp.Body)
	return err
}

// splitListen turns a listen address into one to connect to: an
// unspecified host (":9151", "0.0.0.0:9151") means this machine.
func splitListen(addr string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		return "", "", err
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "[::1]"
	default:
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
	}
	return host, port, nil
}

// describeQuotas says each quota's windows in one line:
// "per-login: messages 100/1h".
func describeQuotas(qs *policy.Quotas) []string {
	var out []string
	for _, n := range qs.Names() {
		ws, _ := qs.Windows(n)
		var parts []string
		for _, k := range []quota.Kind{quota.Messages, quota.Recipients, quota.NewRecipients} {
			for _, w := range ws[k] {
				parts = append(parts, string(k)+" "+policy.FormatWindow(w))
			}
		}
		out = append(out, n+": "+strings.Join(parts, ", "))
	}
	return out
}
