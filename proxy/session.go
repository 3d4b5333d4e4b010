package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/auth"
	"github.com/mailgate/mailgate/proxy/replies"
)

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// session is one client connection's go-smtp Session. Per-message state
// lives in a transaction value created at MAIL and dropped at reset, so
// nothing about one message leaks into the next.
type session struct {
	s    *Server
	l    *ListenerConfig
	conn *clientConn
	helo string
	id   string
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	user, mech   string
	authFailures int

	mu sync.Mutex
	tx *transaction
}

// transaction is the state of one message, from MAIL to the final reply.
type transaction struct {
	id      string
	started time.Time
	from    mailbox
	opts    smtp.MailOptions
	rcpts   []string
	up      RelayTx
	actions policy.Actions // merged from every stage
	rules   []string       // stage/engine/rule of every decision a rule made
	// revisions are the distinct bundle revisions its stages were decided
	// with (policy.Decision.Revision), for the summary line.
	revisions []string
	// quota holds the units the stages reserved (ended by endQuota) and
	// the quota states they saw, handed to the data stage's input.
	quota       *policy.Reservation
	quotaStates map[string]policy.QuotaState
	size        int64
	inData      bool
	done        bool
}

func newSession(s *Server, l *ListenerConfig, cc *clientConn, helo string) *session {
	id := newID()
	ctx, cancel := context.WithCancel(context.Background())
	return &session{
		s: s, l: l, conn: cc, helo: helo, id: id,
		log:    s.log.With("session", id, "listener", l.Name, "remote", cc.remote.String()),
		ctx:    ctx,
		cancel: cancel,
	}
}

func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// AuthMechanisms implements smtp.AuthSession. Nothing is offered before
// TLS unless the loopback listener says allow_insecure_auth.
func (ss *session) AuthMechanisms() []string {
	if ss.s.deps.Auth == nil || !ss.authAllowed() {
		return nil
	}
	return ss.s.deps.Auth.Mechanisms()
}

func (ss *session) authAllowed() bool {
	return ss.conn.tlsState != nil || ss.l.AllowInsecureAuth
}

// Auth implements smtp.AuthSession. go-smtp never closes a connection
// after failed AUTH; mailgate does after max_failures.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.conn.failed.Load() {
		return nil, ss.conn.refuse(replies.BareLineEnding)
	}
	if ss.s.deps.Auth == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if !ss.authAllowed() {
		return nil, replies.EncryptionRequired
	}
	ss.mu.Lock()
	inTx := ss.tx != nil
	ss.mu.Unlock()
	if inTx {
		// RFC 4954 §4: AUTH is not permitted during a mail transaction.
		return nil, replies.AuthInTransaction
	}
	mech = strings.ToUpper(mech)
	srv, err := ss.s.deps.Auth.Server(mech, ss.conn.remote,
		func(user string) {
			ss.s.deps.Metrics.authAttempt(mech, "success")
			ss.user, ss.mech = user, mech
			ss.conn.markLoggedIn() // lifts login_timeout
			ss.log = ss.log.With("user", user)
			ss.log.Info("authenticated", "mechanism", mech)
		},
		func() {
			ss.s.deps.Metrics.authAttempt(mech, "failure")
			ss.authFailures++
			ss.log.Warn("authentication failed", "mechanism", mech, "failures", ss.authFailures)
			if max := ss.s.deps.Auth.MaxFailures(); max > 0 && ss.authFailures >= max {
				ss.conn.closeAfterWrite.Store(true)
			}
		})
	if err != nil {
		if errors.Is(err, auth.ErrTooManyFailures) {
			ss.s.deps.Metrics.authLockout()
		}
		return nil, err
	}
	return lockoutCounter{srv, ss.s.deps.Metrics}, nil
}

// lockoutCounter counts the attempts the failure limiter refuses once the
// credentials arrived (auth.ErrTooManyFailures from Next).
type lockoutCounter struct {
	sasl.Server
	m *Metrics
}

func (c lockoutCounter) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := c.Server.Next(response)
	if errors.Is(err, auth.ErrTooManyFailures) {
		c.m.authLockout()
	}
	return challenge, done, err
}

// input builds the policy document for a stage.
func (ss *session) input(stage policy.Stage, tx *transaction) policy.Input {
	in := policy.Input{
		Version: policy.InputVersion,
		Stage:   stage,
		Session: policy.Session{
			ID:       ss.id,
			Listener: ss.l.Name,
			ClientIP: ss.conn.remote.String(),
			HELO:     ss.helo,
		},
	}
	if st := ss.conn.tlsState; st != nil {
		in.Session.TLS = &policy.TLS{Version: tlsVersionName(st.Version), Cipher: tlsCipherName(st.CipherSuite)}
	}
	if ss.user != "" {
		in.Auth = &policy.Auth{User: ss.user, Mechanism: ss.mech}
	}
	if tx != nil {
		in.Envelope = policy.Envelope{
			From:       tx.from.String(),
			FromDomain: strings.ToLower(tx.from.Domain),
			Recipients: append([]string{}, tx.rcpts...),
			Size:       tx.opts.Size,
			SMTPUTF8:   tx.opts.UTF8,
		}
	}
	return in
}

// decide asks the policy. A policy error fails closed (the engine's
// on_error decides whether it is an error at all). Dry-run decisions are
// logged and enforce nothing.
func (ss *session) decide(tx *transaction, input func() policy.Input) (policy.Decision, error) {
	if ss.s.deps.Policy == nil {
		return policy.Decision{Outcome: policy.Accept}, nil
	}
	in := input()
	d, err := ss.s.deps.Policy.Evaluate(ss.ctx, in)
	if err != nil {
		ss.s.deps.Metrics.decision(string(in.Stage), "error")
		ss.log.Error("policy failed, deferring", "stage", string(in.Stage), "err", err)
		return d, policyUnavailable(ss.id)
	}
	for _, w := range d.Warnings {
		ss.log.Warn("policy warning", "stage", string(in.Stage), "engine", w.Engine, "rule", w.Rule, "msg", w.Message)
	}
	if tx != nil && d.Rule != "" {
		tx.rules = append(tx.rules, string(in.Stage)+"/"+d.Engine+"/"+d.Rule)
	}
	if tx != nil && d.Revision != "" && !slices.Contains(tx.revisions, d.Revision) {
		tx.revisions = append(tx.revisions, d.Revision)
	}
	// A dry-run refusal arrives as a warning (logged above) and is not
	// enforced.
	d.Outcome = d.Enforced()
	if d.Outcome == "" {
		d.Outcome = policy.Accept
	}
	ss.s.deps.Metrics.decision(string(in.Stage), string(d.Outcome))
	if d.Outcome != policy.Accept {
		ss.s.deps.Metrics.refusal(string(in.Stage), d.Engine, refusalRule(d.Rule))
		if d.Engine == policy.QuotaEngine {
			ss.s.deps.Metrics.quotaRefusal(d.Rule)
		}
	}
	return d, nil
}

// keepQuota takes over an accepting decision's reservation and quota
// states into the transaction.
func (tx *transaction) keepQuota(d policy.Decision) {
	tx.quota = tx.quota.Join(d.Reservation)
	if len(d.Quota) > 0 && tx.quotaStates == nil {
		tx.quotaStates = make(map[string]policy.QuotaState, len(d.Quota))
	}
	for k, v := range d.Quota {
		tx.quotaStates[k] = v
	}
}

// endQuota commits the transaction's reserved quota units when the
// message went out, and releases them otherwise. It runs on a context of
// its own: a client that hung up must not keep units reserved until they
// expire.
func (ss *session) endQuota(r *policy.Reservation, commit bool) {
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ss.ctx), quotaEndTimeout)
	defer cancel()
	var err error
	if commit {
		err = r.Commit(ctx)
	} else {
		err = r.Release(ctx)
	}
	if err != nil {
		// A failed release expires by itself; a failed commit under-counts
		// this message (documented).
		ss.log.Warn("quota update failed", "commit", commit, "err", err)
	}
}

// quotaEndTimeout bounds a commit or release of quota units.
const quotaEndTimeout = 5 * time.Second

// Mail implements smtp.Session: policy stage mail, then upstream MAIL.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.conn.failed.Load() {
		return ss.conn.refuse(replies.BareLineEnding)
	}
	if ss.l.AuthRequired() && ss.user == "" {
		return replies.AuthRequired
	}
	ss.mu.Lock()
	busy := ss.tx != nil
	ss.mu.Unlock()
	if busy {
		return replies.NestedMail
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	mb, rerr := parseMailbox(from, true, opts.UTF8)
	if rerr != nil {
		return rerr
	}
	tx := &transaction{id: newID(), started: time.Now(), from: mb, opts: *opts}
	d, err := ss.decide(tx, func() policy.Input { return ss.input(policy.StageMail, tx) })
	if err != nil {
		return ss.reply(err)
	}
	if d.Outcome != policy.Accept {
		ss.logTx(tx, "rejected", "stage", "mail", "reply", replies.Line(decisionReply(d)))
		return decisionReply(d)
	}
	tx.actions.Merge(d.Actions)
	tx.keepQuota(d)
	upOpts := *opts
	upOpts.Auth = nil // the client's AUTH= means nothing to the upstream
	up, err := ss.s.deps.Relay.Begin(ss.ctx, tx.actions.Upstream, mb.String(), &upOpts)
	if err != nil {
		ss.endQuota(tx.quota, false)
		r := ss.reply(err)
		if isSMTPUTF8Refusal(err) {
			r = needsSMTPUTF8(replies.SenderNeedsSMTPUTF8, mb.String())
		}
		ss.logTx(tx, "upstream-refused", "stage", "mail", "reply", replyText(r))
		return r
	}
	tx.up = up
	ss.mu.Lock()
	ss.tx = tx
	ss.mu.Unlock()
	ss.conn.inTx.Store(true)
	return nil
}

// Rcpt implements smtp.Session: policy stage rcpt, then upstream RCPT. The
// upstream's reply for this recipient goes back as is (cleaned).
func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if ss.conn.failed.Load() {
		return ss.conn.refuse(replies.BareLineEnding)
	}
	ss.mu.Lock()
	tx := ss.tx
	ss.mu.Unlock()
	if tx == nil {
		return replies.NeedMail
	}
	mb, rerr := parseMailbox(to, false, tx.opts.UTF8)
	if rerr != nil {
		return rerr
	}
	if !tx.up.SMTPUTF8() && !isASCII(mb.String()) {
		// Refused before the policy: nothing is reserved for it.
		return needsSMTPUTF8(replies.RecipientNeedsSMTPUTF8, mb.String())
	}
	d, err := ss.decide(tx, func() policy.Input {
		in := ss.input(policy.StageRcpt, tx)
		in.Rcpt = &policy.Rcpt{Address: mb.String(), Domain: strings.ToLower(mb.Domain)}
		return in
	})
	if err != nil {
		return ss.reply(err)
	}
	if d.Outcome != policy.Accept {
		ss.log.Info("recipient refused by policy", "rcpt", mb.String(), "engine", d.Engine, "rule", d.Rule)
		return decisionReply(d)
	}
	if opts == nil {
		opts = &smtp.RcptOptions{}
	}
	if err := tx.up.Rcpt(ss.ctx, mb.String(), opts); err != nil {
		// A recipient the upstream refused costs no quota, and its
		// decision's actions do not apply.
		ss.endQuota(d.Reservation, false)
		return ss.reply(err)
	}
	tx.actions.Merge(d.Actions)
	tx.keepQuota(d)
	tx.rcpts = append(tx.rcpts, mb.String())
	return nil
}

// Data implements smtp.Session. The whole message is received, checked
// and spooled before anything is sent upstream; the client gets 250 only
// after the upstream's 250. Every failure aborts the upstream transaction.
func (ss *session) Data(r io.Reader) error {
	// go-smtp wrote 354 just before: this is DATA, not BDAT.
	isDATA := ss.conn.dataPending.Swap(false)
	if ss.conn.failed.Load() {
		// Reset (always called after Data) aborts the upstream side.
		return ss.conn.refuse(replies.BareLineEnding)
	}
	ss.mu.Lock()
	tx := ss.tx
	if tx != nil {
		tx.inData = true
	}
	ss.mu.Unlock()
	if tx == nil {
		return replies.NeedMail
	}
	ss.conn.setMode(modeData)
	defer ss.conn.setMode(modeCommand)

	var body io.Reader = &stickyReader{r: r}
	if isDATA {
		// DATA (not BDAT): read the body in bulk (see body.go).
		br := ss.conn.body(ss.s.cfg.Limits.MaxMessageSize)
		defer br.finish()
		body = br
	}
	in := &countingReader{r: body}
	text, err := ss.data(tx, in)
	ss.mu.Lock()
	tx.inData = false
	tx.done = true
	ss.mu.Unlock()
	ss.endQuota(tx.quota, err == nil)
	if err != nil {
		if in.clientGone() {
			// Not an error of ours: the client hung up (or RSET between
			// BDAT chunks). Nobody reads a reply.
			ss.logTx(tx, "aborted", "stage", "data", "reason", in.err.Error(), "received", in.n)
			return replies.Aborted
		}
		rerr := ss.reply(err)
		ss.logTx(tx, "failed", "reply", replyText(rerr))
		return rerr
	}
	ok := replies.Queued.With(tx.id)
	ss.logTx(tx, "relayed", "reply", replies.Line(ok), "upstream_reply", sanitize(text))
	return ok
}

// data does the work of Data. Until the upstream DATA has been attempted,
// an error aborts the upstream transaction (RSET): a message that the
// client was not told is accepted is never completed upstream.
func (ss *session) data(tx *transaction, r io.Reader) (string, error) {
	sent := false
	defer func() {
		if !sent {
			tx.up.Abort()
		}
	}()
	lim := &ss.s.cfg.Limits
	br := getReader(r, max(4096, lim.MaxLineLength+2))
	defer putReader(br)
	h, err := readHeader(br, lim.MaxHeaderSize)
	if err != nil {
		return "", err
	}
	sp := newSpool(ss.s.cfg.Message.SpoolThreshold, ss.s.cfg.Message.SpoolDir)
	defer sp.Close()
	if _, err := br.WriteTo(sp); err != nil {
		return "", err
	}
	if ss.conn.failed.Load() {
		// The stream broke on a line that still reached go-smtp (a
		// partial "BDAT 0 LAST" after a chunk ending in a bare CR):
		// the body is not a message.
		return "", ss.conn.refuse(replies.BareLineEnding)
	}
	tx.size = int64(h.size) + sp.Size()

	d, err := ss.decide(tx, func() policy.Input {
		in := ss.input(policy.StageData, tx)
		in.Quota = tx.quotaStates
		in.Envelope.Size = tx.size
		in.Message = h.policyView(tx.size)
		return in
	})
	if err != nil {
		return "", err
	}
	if d.Outcome != policy.Accept {
		return "", decisionReply(d)
	}
	tx.actions.Merge(d.Actions)
	if err := h.applyActions(tx.actions); err != nil {
		return "", err
	}
	now := ss.s.deps.Now()
	if err := h.hygiene(ss.s.cfg.Hostname, now); err != nil {
		return "", err
	}
	if rcv := ss.received(tx, now); rcv != "" {
		h.prepend("Received", rcv)
	}
	if tx.opts.UTF8 && !tx.up.SMTPUTF8() {
		// The client asked for SMTPUTF8, the upstream MAIL went without
		// it: only an all-ASCII header may go (RFC 6531 section 3.4).
		if name := h.nonASCIIField(); name != "" {
			return "", needsSMTPUTF8(replies.HeaderNeedsSMTPUTF8, name)
		}
	}
	hb := h.bytes()
	var sigs []string
	if ss.s.deps.Signer != nil {
		sigs, err = ss.s.deps.Signer.Sign(ss.ctx, tx.actions.DKIMDomain, io.MultiReader(bytes.NewReader(hb), sp.Reader()))
		if err != nil {
			return "", fmt.Errorf("%w: %w", errSign, err)
		}
	}
	msg := io.MultiReader(strings.NewReader(strings.Join(sigs, "")), bytes.NewReader(hb), sp.Reader())
	sent = true
	return tx.up.Data(ss.ctx, msg)
}

// received builds the Received header (RFC 5321 §4.4). "private", the
// default, names neither the client's address nor its HELO.
func (ss *session) received(tx *transaction, now time.Time) string {
	proto := "ESMTP"
	if ss.conn.tlsState != nil {
		proto += "S"
	}
	if ss.user != "" {
		proto += "A"
	}
	if tx.opts.UTF8 {
		proto = "UTF8" + strings.TrimPrefix(proto, "E")
	}
	date := now.Format(time.RFC1123Z)
	switch ss.s.cfg.Message.ReceivedHeader {
	case "none":
		return ""
	case "full":
		return fmt.Sprintf("from %s ([%s])\r\n\tby %s (mailgate) with %s id %s;\r\n\t%s",
			sanitizeHELO(ss.helo), ss.conn.remote.String(), ss.s.cfg.Hostname, proto, tx.id, date)
	default:
		return fmt.Sprintf("by %s (mailgate) with %s id %s;\r\n\t%s", ss.s.cfg.Hostname, proto, tx.id, date)
	}
}

func sanitizeHELO(h string) string {
	h = sanitize(h)
	if h == "" || strings.ContainsAny(h, "()[];\\\" ") {
		return "unknown"
	}
	return h
}

// Reset implements smtp.Session: the transaction is dropped, and aborted
// upstream unless Data owns it (BDAT runs Data concurrently; it aborts
// itself when its reader fails).
func (ss *session) Reset() {
	ss.mu.Lock()
	tx := ss.tx
	ss.tx = nil
	abort := tx != nil && !tx.inData && !tx.done
	ss.mu.Unlock()
	ss.conn.inTx.Store(false)
	if abort {
		tx.up.Abort()
		ss.endQuota(tx.quota, false)
		ss.logTx(tx, "aborted")
	}
}

// Logout implements smtp.Session.
func (ss *session) Logout() error {
	ss.Reset()
	ss.cancel()
	return nil
}

// logTx writes the one summary line of a transaction.
func (ss *session) logTx(tx *transaction, outcome string, kv ...any) {
	ss.s.deps.Metrics.transaction(ss.l.Name, outcome, tx.started, tx.size)
	attrs := []any{
		"outcome", outcome,
		"tx", tx.id,
		"from", tx.from.String(),
		"rcpts", len(tx.rcpts),
		"size", tx.size,
		"duration", time.Since(tx.started).Round(time.Microsecond).String(),
	}
	if tx.up != nil {
		attrs = append(attrs, "upstream", tx.up.Upstream())
		if tx.opts.UTF8 {
			// The client asked for SMTPUTF8: say whether the upstream
			// transaction carries it or went without (all-ASCII mail).
			v := "passed"
			if !tx.up.SMTPUTF8() {
				v = "dropped"
			}
			attrs = append(attrs, "smtputf8", v)
		}
	}
	if len(tx.rules) > 0 {
		attrs = append(attrs, "rules", strings.Join(tx.rules, ","))
	}
	if len(tx.revisions) > 0 {
		attrs = append(attrs, "policy_revision", strings.Join(tx.revisions, ","))
	}
	if tx.actions.DKIMDomain != "" {
		attrs = append(attrs, "dkim_domain", tx.actions.DKIMDomain)
	}
	ss.log.Info("transaction", append(attrs, kv...)...)
}

func replyText(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return replies.Line(se)
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// stickyReader keeps returning the first error of r. bufio.Reader.fill
// reads again after an error it has not handed out yet, which would replace
// a refusal (bare LF, timeout) by whatever the connection says next.
type stickyReader struct {
	r   io.Reader
	err error
}

func (s *stickyReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.err = err
	return n, err
}

var readerPool sync.Pool

// getReader returns a pooled bufio.Reader of at least size bytes on r.
func getReader(r io.Reader, size int) *bufio.Reader {
	if br, ok := readerPool.Get().(*bufio.Reader); ok && br.Size() >= size {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, size)
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}
