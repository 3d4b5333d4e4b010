// Package policy decides what happens to every envelope mailgate sees.
//
// The proxy builds one Input document per stage (mail, rcpt, data) and asks
// an Evaluator for a Decision. Engines (Rego, HCL rules) see the same
// document; a Chain combines them in a fixed order: the first reject wins,
// then the first defer, else accept. Warnings are logged, never enforced.
package policy

import "context"

// InputVersion is the version of the Input document. It changes only when a
// field is removed or changes meaning; new fields keep the version.
const InputVersion = 1

// Stage names the point of the SMTP transaction an Input describes.
type Stage string

// The stages, in the order they happen within a transaction.
const (
	StageMail Stage = "mail" // after MAIL FROM, before the upstream MAIL
	StageRcpt Stage = "rcpt" // per recipient, before the upstream RCPT
	StageData Stage = "data" // after the body, before signing and upstream DATA
)

// Input is the document every engine evaluates. Its JSON form is the policy
// contract documented in docs/policy.md ("The input document"); field names
// never change within a version.
type Input struct {
	Version  int      `json:"version"`
	Stage    Stage    `json:"stage"`
	Session  Session  `json:"session"`
	Auth     *Auth    `json:"auth"` // nil when the client did not authenticate
	Envelope Envelope `json:"envelope"`
	Rcpt     *Rcpt    `json:"rcpt,omitempty"`    // stage rcpt only
	Message  *Message `json:"message,omitempty"` // stage data only
	// Quota holds, by quota name, the state of each quota that applies to
	// this stage (filled by the Policy before its engines run; at stage
	// data, the states the transaction's earlier stages saw). Empty, never
	// null, when none applies.
	Quota map[string]QuotaState `json:"quota"`
}

// QuotaState is what a policy sees of one quota: the key it counted and
// each window's level after this stage's reservation.
type QuotaState struct {
	Key    string `json:"key"`
	Action string `json:"action"` // defer, reject or warn
	// Exceeded is true when a window of this quota had no room for this
	// stage (the quota then refused, unless its action is warn).
	Exceeded      bool          `json:"exceeded"`
	Messages      []QuotaWindow `json:"messages"`
	Recipients    []QuotaWindow `json:"recipients"`
	NewRecipients []QuotaWindow `json:"new_recipients"`
}

// QuotaWindow is the level of one "COUNT/DURATION" window.
type QuotaWindow struct {
	Window string `json:"window"` // as configured: "200/1h"
	Limit  int64  `json:"limit"`
	// Used counts committed and reserved units in the window, this
	// stage's own reservation included when it was made.
	Used      int64 `json:"used"`
	Remaining int64 `json:"remaining"` // max(Limit-Used, 0)
	// RetryAfter is the number of seconds until the window has room again
	// when it has none; 0 otherwise.
	RetryAfter int64 `json:"retry_after"`
}

// Session describes the client connection.
type Session struct {
	ID       string `json:"id"`
	Listener string `json:"listener"`
	ClientIP string `json:"client_ip"`
	HELO     string `json:"helo"`
	TLS      *TLS   `json:"tls"` // nil on a plaintext connection
}

// TLS describes the negotiated TLS parameters of a session.
type TLS struct {
	Version string `json:"version"` // "TLS1.2", "TLS1.3"
	Cipher  string `json:"cipher"`
}

// Auth is the authenticated identity. It never carries a secret.
type Auth struct {
	User      string `json:"user"`
	Mechanism string `json:"mechanism"`
}

// Envelope is the SMTP envelope as accepted so far. At stage rcpt,
// Recipients holds the recipients accepted before the one being decided.
type Envelope struct {
	From       string   `json:"from"`
	FromDomain string   `json:"from_domain"`
	Recipients []string `json:"recipients"`
	Size       int64    `json:"size"` // SIZE= at mail/rcpt, actual size at data
	SMTPUTF8   bool     `json:"smtputf8"`
}

// Rcpt is the recipient being decided at stage rcpt.
type Rcpt struct {
	Address string `json:"address"`
	Domain  string `json:"domain"`
}

// Message is what the data stage sees of the message.
type Message struct {
	// Headers maps lower-case header names to their unfolded values, in
	// order of appearance.
	Headers       map[string][]string `json:"headers"`
	FromAddresses []string            `json:"from_addresses"`
	Size          int64               `json:"size"`
}

// Evaluator decides one stage of one transaction. Implementations are safe
// for concurrent use; they never block on I/O that the configuration did not
// enable.
type Evaluator interface {
	Evaluate(ctx context.Context, in Input) (Decision, error)
}
