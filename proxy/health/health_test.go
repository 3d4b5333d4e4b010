package health_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailgate/mailgate/proxy/health"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	var upOK atomic.Bool
	c := health.New(
		health.Check{Name: "listeners", Ready: func() error { return nil }},
		health.Check{Name: "upstreams", Ready: func() error {
			if upOK.Load() {
				return nil
			}
			return errors.New("none answers:\r\nsink down")
		}},
	)
	mux := http.NewServeMux()
	c.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, tc := range []struct {
		name    string
		step    func()
		code    int
		body    string
		healthz int
	}{
		{"upstream down", func() {}, 503, "not ready\nupstreams: none answers:  sink down\n", 200},
		{"all ready", func() { upOK.Store(true) }, 200, "ready\n", 200},
		{"draining", c.Drain, 503, "not ready\nshutting down\n", 200},
		{"draining stays off", func() { upOK.Store(false) }, 503, "not ready\nshutting down\nupstreams: none answers:  sink down\n", 200},
	} {
		tc.step()
		code, body := get(t, srv, "/readyz")
		if code != tc.code || body != tc.body {
			t.Errorf("%s: /readyz %d %q, want %d %q", tc.name, code, body, tc.code, tc.body)
		}
		if code, _ := get(t, srv, "/healthz"); code != tc.healthz {
			t.Errorf("%s: /healthz %d", tc.name, code)
		}
	}
	resp, err := srv.Client().Post(srv.URL+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d", resp.StatusCode)
	}
}

// TestPoller: not ready before the first probe, then the last result of
// each run; the probe gets a context with the timeout.
func TestPoller(t *testing.T) {
	var fail atomic.Bool
	runs := make(chan struct{}, 100)
	p := health.NewPoller(func(ctx context.Context) error {
		defer func() { runs <- struct{}{} }()
		if _, ok := ctx.Deadline(); !ok {
			t.Error("probe without a deadline")
		}
		if fail.Load() {
			return errors.New("down")
		}
		return nil
	}, 10*time.Millisecond, time.Second)
	if err := p.Ready(); err == nil || !strings.Contains(err.Error(), "not probed yet") {
		t.Fatalf("before the first run: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	wait := func(want bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for (p.Ready() == nil) != want {
			select {
			case <-runs:
			case <-deadline:
				t.Fatalf("Ready never became ok=%v: %v", want, p.Ready())
			}
		}
	}
	wait(true)
	fail.Store(true)
	wait(false)
	fail.Store(false)
	wait(true)
	cancel()
	<-done
}
