package proxy

import (
	"context"
	"errors"
	"io"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/upstream"
)

// UpstreamRelay adapts the pooled upstream client to Relay.
func UpstreamRelay(r *upstream.Router) Relay { return routerRelay{r} }

type routerRelay struct{ r *upstream.Router }

func (rr routerRelay) Begin(ctx context.Context, route, from string, opts *smtp.MailOptions) (RelayTx, error) {
	tx, err := rr.r.Begin(ctx, route, from, opts)
	if err != nil {
		return nil, err
	}
	return routerTx{tx}, nil
}

// UpstreamStats implements UpstreamCounters.
func (rr routerRelay) UpstreamStats() []upstream.UpstreamStats { return rr.r.UpstreamStats() }

// Offers implements ExtensionProber: true when every upstream offers ext.
func (rr routerRelay) Offers(ctx context.Context, ext string) bool { return rr.r.Offer(ctx, ext) }

type routerTx struct{ *upstream.Tx }

func (t routerTx) Data(ctx context.Context, r io.Reader) (string, error) {
	rep, err := t.Tx.Data(ctx, r)
	if err != nil {
		return "", err
	}
	return rep.String(), nil
}

// upstreamReply maps an error of the upstream package to the client's
// reply, or returns nil when err is not one.
func upstreamReply(err error) *smtp.SMTPError {
	for _, s := range []error{upstream.ErrTimeout, upstream.ErrUnavailable, upstream.ErrInvalidAddress,
		upstream.ErrInvalidParameter, upstream.ErrSMTPUTF8, upstream.ErrRequireTLS} {
		if errors.Is(err, s) {
			return upstream.AsSMTPError(err)
		}
	}
	return nil
}

// isSMTPUTF8Refusal reports whether err is the upstream package's refusal
// of an address that needs SMTPUTF8 the upstream does not offer.
func isSMTPUTF8Refusal(err error) bool { return errors.Is(err, upstream.ErrSMTPUTF8) }
