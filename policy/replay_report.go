package policy

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// WriteReplayReport prints rep for a person (the text output of
// "mailgate policy replay"; cfgPath names the candidate): one line per change,
// then the unchanged counts per stage and what was skipped.
func WriteReplayReport(w io.Writer, rep ReplayReport, cfgPath string) {
	span := ""
	if rep.Range != nil {
		span = fmt.Sprintf(" (%s … %s)", rep.Range["first"], rep.Range["last"])
	}
	fmt.Fprintf(w, "replayed %s decisions from %d file(s)%s with the policy of %s\n",
		thousands(rep.Replayed), rep.Files, span, cfgPath)
	if rep.Changed == 0 {
		fmt.Fprintln(w, "changed: none")
	} else {
		fmt.Fprintf(w, "changed: %s\n", thousands(rep.Changed))
	}
	for _, c := range rep.Changes {
		senders := thousands(int64(c.Senders))
		if c.SendersCapped {
			senders = "≥" + senders
		}
		noun := "senders"
		if c.Senders == 1 && !c.SendersCapped {
			noun = "sender"
		}
		fmt.Fprintf(w, "%s: %s decisions, %s %s, e.g. %s\n", c.Label(), thousands(c.Decisions), senders, noun, examples(c.Examples))
	}
	if rep.OtherChanges > 0 {
		fmt.Fprintf(w, "… and %s more changed decisions of other kinds\n", thousands(rep.OtherChanges))
	}
	fmt.Fprintf(w, "unchanged: mail %s, rcpt %s, data %s\n", thousands(rep.Unchanged[StageMail]),
		thousands(rep.Unchanged[StageRcpt]), thousands(rep.Unchanged[StageData]))
	var notes []string
	add := func(n int64, what string) {
		if n > 0 {
			notes = append(notes, thousands(n)+" "+what)
		}
	}
	add(rep.Unparsable, "unparsable lines")
	add(rep.NewerVer, "records of a newer version")
	add(rep.OutOfRange, "records outside -since/-until")
	add(int64(rep.TruncatedFiles), "truncated compressed files")
	add(rep.QuotaUnavailable, "deferred by an unavailable quota store")
	if len(notes) > 0 {
		fmt.Fprintf(w, "skipped: %s\n", strings.Join(notes, ", "))
	}
	if rep.CandidateErrors > 0 {
		fmt.Fprintf(w, "note: the candidate policy failed on %s decisions (replayed as its fail-closed defer)\n", thousands(rep.CandidateErrors))
	}
	if rep.HeadersOmitted > 0 {
		fmt.Fprintf(w, "note: %s data-stage decisions were logged without header values (log_headers = false); rules reading them saw empty values\n",
			thousands(rep.HeadersOmitted))
	}
}

func examples(es []ReplayExample) string {
	parts := make([]string, len(es))
	for i, e := range es {
		s := string(e.Stage) + " " + orNull(e.From)
		if e.Rcpt != "" {
			s += " → " + e.Rcpt
		}
		parts[i] = fmt.Sprintf("%s (session %s, %s)", s, e.Session, e.Time.UTC().Format(time.RFC3339))
	}
	return strings.Join(parts, "; ")
}

func orNull(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

// thousands formats n with commas: 1,204.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
