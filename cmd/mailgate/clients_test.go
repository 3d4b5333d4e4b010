package main

// The client matrix: real submission clients — swaks, curl, Python's
// smtplib, Go's net/smtp, msmtp, mutt, Nodemailer, PHPMailer and Jakarta
// Mail (Java Mail) —
// each over STARTTLS + AUTH and over implicit TLS, each with a wrong
// password, against one mailgate. The upstream is an in-process go-smtp
// server that offers SMTPUTF8 and 8BITMIME: net/smtp adds SMTPUTF8 to
// MAIL whenever mailgate offers it, and mailgate refuses to relay an
// SMTPUTF8 transaction to an upstream without it (550 5.6.7, RFC 6531),
// so an smtp-sink upstream would fail that client for a reason that is
// not the client's.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

// matrixUpstream records what arrives, with the MAIL parameters each
// client's transaction carried (mailgate passes BODY and SMTPUTF8 on).
type matrixUpstream struct {
	addr string
	mu   sync.Mutex
	got  map[string]arrival // by Subject
}

type arrival struct {
	utf8  bool // the client asked for SMTPUTF8 (mailgate passes it on)
	rcpts int
}

type matrixSession struct {
	u     *matrixUpstream
	opts  gosmtp.MailOptions
	rcpts int
}

func (s *matrixSession) Mail(_ string, o *gosmtp.MailOptions) error {
	if o != nil {
		s.opts = *o
	}
	return nil
}
func (s *matrixSession) Rcpt(string, *gosmtp.RcptOptions) error { s.rcpts++; return nil }
func (s *matrixSession) Reset()                                 { s.opts, s.rcpts = gosmtp.MailOptions{}, 0 }
func (s *matrixSession) Logout() error                          { return nil }
func (s *matrixSession) Data(r io.Reader) error {
	m, err := mail.ReadMessage(r)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, m.Body)
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	s.u.got[m.Header.Get("Subject")] = arrival{utf8: s.opts.UTF8, rcpts: s.rcpts}
	return nil
}

func startMatrixUpstream(t *testing.T) *matrixUpstream {
	t.Helper()
	u := &matrixUpstream{got: map[string]arrival{}}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) {
		return &matrixSession{u: u}, nil
	}))
	srv.Domain = "upstream.test"
	srv.EnableSMTPUTF8 = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *matrixUpstream) arrived(subject string) (arrival, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	a, ok := u.got[subject]
	return a, ok
}

// matrixCase is one client run: mode is "starttls" or "implicit".
type matrixCase struct {
	addr, mode, password, subject string
	certFile                      string // mailgate's certificate (PEM), for clients that must trust it
	lf                            bool   // the application hands over LF line ends
}

func (c matrixCase) hostPort() (string, string) {
	h, p, _ := net.SplitHostPort(c.addr)
	return h, p
}

func (c matrixCase) message() string {
	m := "From: " + e2eUser + "\r\nTo: bob@example.net\r\nSubject: " + c.subject + "\r\n\r\nclient matrix\r\n"
	if c.lf {
		m = strings.ReplaceAll(m, "\r\n", "\n")
	}
	return m
}

// matrixClient runs one case and returns the client's output and whether
// it reported success.
type matrixClient struct {
	name  string
	tools []string
	// authFailure matches the output of a run refused at AUTH.
	authFailure *regexp.Regexp
	// lfRefusal, when set, matches the output of a run whose message had
	// LF line ends: the client sends them as they are and mailgate refuses
	// the bare LFs (550 5.6.0). Nil: the client converts them to CRLF.
	lfRefusal *regexp.Regexp
	run       func(t *testing.T, c matrixCase) (out string, ok bool)
	// batch, when set, runs all cases in one process (a JVM starts slowly)
	// and replaces run.
	batch func(t *testing.T, cs []matrixCase) map[string]matrixResult
}

type matrixResult struct {
	out string
	ok  bool
}

func toolRun(t *testing.T, stdin []byte, env []string, name string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peertest.DefaultTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

var matrixClients = []matrixClient{
	{
		name: "swaks", tools: []string{"swaks"}, authFailure: regexp.MustCompile(`(?m)^<~\* 535 `),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			args := []string{"--server", c.addr, "--timeout", "20", "--from", e2eUser, "--to", "bob@example.net",
				"--auth-user", e2eUser, "--auth-password", c.password, "--data", c.message()}
			if c.mode == "implicit" {
				args = append(args, "--tlsc", "--auth", "LOGIN")
			} else {
				args = append(args, "--tls", "--auth", "PLAIN", "--pipeline")
			}
			out, code := peertest.Swaks(t, args...)
			return out, code == 0
		},
	},
	{
		name: "curl", tools: []string{"curl"}, authFailure: regexp.MustCompile(`curl: \(67\)`),
		// Without --crlf curl uploads the file as is; mailgate's 550 and
		// close after the bare LF reach curl as "(8) Weird server reply".
		lfRefusal: regexp.MustCompile(`curl: \(8\)`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			url := "smtp://" + c.addr
			args := []string{"-sS", "--ssl-reqd"}
			if c.mode == "implicit" {
				url, args = "smtps://"+c.addr, []string{"-sS"}
			}
			args = append(args, "--url", url, "--insecure", "--user", e2eUser+":"+c.password,
				"--mail-from", e2eUser, "--mail-rcpt", "bob@example.net", "--upload-file", "-")
			out, code := peertest.RunTool(t, peertest.DefaultTimeout, []byte(c.message()), "curl", args...)
			return out, code == 0
		},
	},
	{
		name: "python-smtplib", authFailure: regexp.MustCompile(`AUTHFAIL 535`),
		// sendmail() converts line ends of a str, not of bytes (as here).
		lfRefusal: regexp.MustCompile(`SMTPDataError: \(550, b'5\.6\.0`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			host, port := c.hostPort()
			out, code := peertest.PythonSMTP(t, `
import smtplib, ssl, sys
host, port, mode, user, pw, msg = sys.argv[1:7]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
if mode == "implicit":
    s = smtplib.SMTP_SSL(host, int(port), timeout=20, context=ctx)
else:
    s = smtplib.SMTP(host, int(port), timeout=20)
    s.starttls(context=ctx)
try:
    s.login(user, pw)
except smtplib.SMTPAuthenticationError as e:
    print("AUTHFAIL", e.smtp_code, e.smtp_error.decode())
    sys.exit(3)
refused = s.sendmail(user, ["bob@example.net"], msg.encode())
s.quit()
sys.exit(1 if refused else 0)
`, host, port, c.mode, e2eUser, c.password, c.message())
			return out, code == 0
		},
	},
	{
		name: "go-net-smtp", authFailure: regexp.MustCompile(`535 5\.7\.8`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			err := netSMTPSend(c)
			var te *textproto.Error
			if errors.As(err, &te) {
				// Error() quotes Msg (Go 1.26); show the reply as sent.
				return fmt.Sprintf("%d %s", te.Code, te.Msg), false
			}
			if err != nil {
				return err.Error(), false
			}
			return "", true
		},
	},
	{
		name: "msmtp", tools: []string{"msmtp"}, authFailure: regexp.MustCompile(`535 5\.7\.8`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			host, port := c.hostPort()
			starttls := "on"
			if c.mode == "implicit" {
				starttls = "off"
			}
			// A password file keeps the password off the command line.
			pwFile := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pwFile, []byte(c.password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return toolRun(t, []byte(c.message()), nil, "msmtp", "--host="+host, "--port="+port,
				"--tls=on", "--tls-starttls="+starttls, "--tls-certcheck=off", "--auth=on",
				"--user="+e2eUser, "--passwordeval=cat "+pwFile, "--timeout=20", "-v",
				"-f", e2eUser, "bob@example.net")
		},
	},
	{
		name: "nodemailer", tools: []string{"nodemailer"}, authFailure: regexp.MustCompile(`EAUTH.*535`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			host, port := c.hostPort()
			return toolRun(t, nil, []string{"NODE_PATH=" + peertest.NodePath}, "node", "-e", `
const nodemailer = require("nodemailer");
const [host, port, mode, user, pass, raw] = process.argv.slice(1);
const t = nodemailer.createTransport({
  host, port: Number(port), secure: mode === "implicit", requireTLS: mode !== "implicit",
  tls: { rejectUnauthorized: false }, auth: { user, pass },
  connectionTimeout: 20000, greetingTimeout: 20000, socketTimeout: 20000,
});
t.sendMail({ envelope: { from: user, to: ["bob@example.net"] }, raw })
  .then(info => { console.log("OK", info.response); })
  .catch(err => { console.log(err.code, err.response || err.message); process.exit(3); });
`, host, port, c.mode, e2eUser, c.password, c.message())
		},
	},
	{
		name: "mutt", tools: []string{"mutt"}, authFailure: regexp.MustCompile(`SASL authentication failed`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			// Batch mode cannot ask whether to trust a certificate:
			// certificate_file holds it.
			home := t.TempDir()
			scheme := "smtp"
			if c.mode == "implicit" {
				scheme = "smtps"
			}
			rc := filepath.Join(home, "muttrc")
			if err := os.WriteFile(rc, []byte(fmt.Sprintf(`set smtp_url = "%s://%s@%s/"
set smtp_pass = "%s"
set ssl_starttls = yes
set ssl_force_tls = yes
set ssl_verify_host = no
set certificate_file = "%s"
set from = "%s"
set use_from = yes
set envelope_from = yes
set record = ""
set folder = "%s"
`, scheme, strings.ReplaceAll(e2eUser, "@", "%40"), c.addr, c.password, c.certFile, e2eUser, home)), 0o600); err != nil {
				t.Fatal(err)
			}
			body := "client matrix\n"
			if !c.lf {
				body = "client matrix\r\n"
			}
			return toolRun(t, []byte(body), []string{"HOME=" + home}, "mutt", "-n", "-F", rc, "-s", c.subject, "--", "bob@example.net")
		},
	},
	{
		name: "phpmailer", tools: []string{"phpmailer"}, authFailure: regexp.MustCompile(`SERVER -> CLIENT: 535 5\.7\.8`),
		run: func(t *testing.T, c matrixCase) (string, bool) {
			host, port := c.hostPort()
			return toolRun(t, nil, nil, "php", "-r", phpMailerSubmit, host, port, c.mode, e2eUser, c.password, c.subject)
		},
	},
	{
		name: "jakarta-mail", tools: []string{"jakarta-mail"}, authFailure: regexp.MustCompile(`AUTHFAIL .*535`),
		batch: func(t *testing.T, cs []matrixCase) map[string]matrixResult {
			src := filepath.Join(t.TempDir(), "Submit.java")
			if err := os.WriteFile(src, []byte(jakartaSubmit), 0o600); err != nil {
				t.Fatal(err)
			}
			var in strings.Builder
			for _, c := range cs {
				host, port := c.hostPort()
				fmt.Fprintf(&in, "%s\t%s\t%s\t%s\t%s\t%s\n", c.mode, host, port, e2eUser, c.password, c.subject)
			}
			out, _ := toolRun(t, []byte(in.String()), nil, "java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
				"-cp", peertest.JakartaMailClasspath, src)
			res := map[string]matrixResult{}
			for _, l := range strings.Split(out, "\n") {
				subject, result, found := strings.Cut(l, "\t")
				if found {
					res[subject] = matrixResult{out: result, ok: result == "OK"}
				}
			}
			for _, c := range cs {
				if _, ok := res[c.subject]; !ok {
					res[c.subject] = matrixResult{out: out}
				}
			}
			return res
		},
	},
}

// phpMailerSubmit sends a message with PHPMailer as a PHP application
// would (SMTPSecure "tls" = STARTTLS, "ssl" = implicit TLS), with the
// server's replies in its output (SMTPDebug 2).
const phpMailerSubmit = `
require "` + peertest.PHPMailerAutoload + `";
use PHPMailer\PHPMailer\PHPMailer;
[$host, $port, $mode, $user, $pass, $subject] = array_slice($argv, 1);
$m = new PHPMailer(true);
$m->isSMTP();
$m->Host = $host;
$m->Port = (int)$port;
$m->SMTPAuth = true;
$m->Username = $user;
$m->Password = $pass;
$m->SMTPSecure = $mode === "implicit" ? PHPMailer::ENCRYPTION_SMTPS : PHPMailer::ENCRYPTION_STARTTLS;
$m->SMTPOptions = ["ssl" => ["verify_peer" => false, "verify_peer_name" => false, "allow_self_signed" => true]];
$m->Timeout = 20;
$m->SMTPDebug = 2;
$m->Debugoutput = "echo";
$m->setFrom($user);
$m->addAddress("bob@example.net");
$m->Subject = $subject;
$m->Body = "client matrix\n";
try {
    $m->send();
    echo "OK\n";
} catch (Exception $e) {
    echo "FAIL ", $m->ErrorInfo, "\n";
    exit(3);
}
`

// jakartaSubmit sends one message per stdin line (mode, host, port,
// user, password, subject; tab-separated) with Jakarta Mail, as a Java
// application would: STARTTLS required, or SMTPS. It prints
// "subject<TAB>OK" or "subject<TAB>AUTHFAIL …" per line.
const jakartaSubmit = `
import jakarta.mail.*;
import jakarta.mail.internet.*;
import java.io.*;
import java.util.Properties;

public class Submit {
    public static void main(String[] args) throws Exception {
        BufferedReader r = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = r.readLine()) != null; ) {
            String[] a = line.split("\t");
            System.out.println(a[5] + "\t" + send(a[0], a[1], a[2], a[3], a[4], a[5]));
        }
    }

    static String send(String mode, String host, String port, String user, String pw, String subject) {
        Properties p = new Properties();
        String proto = mode.equals("implicit") ? "smtps" : "smtp";
        p.put("mail." + proto + ".auth", "true");
        p.put("mail." + proto + ".ssl.trust", "*");
        p.put("mail." + proto + ".ssl.checkserveridentity", "false");
        p.put("mail." + proto + ".connectiontimeout", "20000");
        p.put("mail." + proto + ".timeout", "20000");
        if (!mode.equals("implicit")) {
            p.put("mail.smtp.starttls.enable", "true");
            p.put("mail.smtp.starttls.required", "true");
        }
        Session s = Session.getInstance(p);
        try (Transport t = s.getTransport(proto)) {
            MimeMessage m = new MimeMessage(s);
            m.setFrom(new InternetAddress(user));
            m.setRecipients(Message.RecipientType.TO, "bob@example.net");
            m.setSubject(subject);
            m.setText("client matrix\n");
            t.connect(host, Integer.parseInt(port), user, pw);
            t.sendMessage(m, m.getAllRecipients());
            return "OK";
        } catch (AuthenticationFailedException e) {
            return "AUTHFAIL " + e.getMessage();
        } catch (Exception e) {
            return "ERROR " + e;
        }
    }
}
`

// netSMTPSend is what a Go application does with the standard library:
// net/smtp with smtp.PlainAuth, over STARTTLS or over a tls.Dial
// connection (implicit TLS).
func netSMTPSend(c matrixCase) error {
	host, _ := c.hostPort()
	tc := &tls.Config{InsecureSkipVerify: true} // the test's self-signed certificate
	var cl *smtp.Client
	if c.mode == "implicit" {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 20 * time.Second}, "tcp", c.addr, tc)
		if err != nil {
			return err
		}
		if cl, err = smtp.NewClient(conn, host); err != nil {
			return err
		}
	} else {
		var err error
		if cl, err = smtp.Dial(c.addr); err != nil {
			return err
		}
		if err := cl.StartTLS(tc); err != nil {
			return err
		}
	}
	defer cl.Close()
	if err := cl.Auth(smtp.PlainAuth("", e2eUser, c.password, host)); err != nil {
		return err
	}
	if err := cl.Mail(e2eUser); err != nil {
		return err
	}
	if err := cl.Rcpt("bob@example.net"); err != nil {
		return err
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, c.message()); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return cl.Quit()
}

var mechanismRe = regexp.MustCompile(`"mechanism":"(\w+)"`)

// TestClientMatrix runs every client over STARTTLS (587-style) and
// implicit TLS (465-style): the message arrives; with a wrong password the
// client reports the AUTH refusal and nothing arrives.
func TestClientMatrix(t *testing.T) {
	up := startMatrixUpstream(t)
	// Every client fails AUTH twice from 127.0.0.1: more than the default
	// ip_failures (20 per window, never cleared by a success).
	m := startMailgateAuth(t, upstreamBlock(up.addr), "ip_failures = 1000")
	for _, cl := range matrixClients {
		t.Run(cl.name, func(t *testing.T) {
			if len(cl.tools) > 0 {
				peertest.Require(t, cl.tools...)
			}
			cases := map[string]matrixCase{}
			var all []matrixCase
			for _, mode := range []string{"starttls", "implicit"} {
				addr := m.sub
				if mode == "implicit" {
					addr = m.smtps
				}
				cert := filepath.Join(m.dir, "cert.pem")
				good := matrixCase{addr: addr, mode: mode, password: e2ePassword, subject: "matrix " + cl.name + " " + mode, certFile: cert}
				bad, lf := good, good
				bad.password, bad.subject = "wrong password", good.subject+" wrong"
				lf.lf, lf.subject = true, good.subject+" lf"
				cases[mode], cases[mode+"_wrong_password"], cases[mode+"_lf_line_ends"] = good, bad, lf
				all = append(all, good, bad, lf)
			}
			run := cl.run
			if cl.batch != nil {
				before := len(m.logs.String())
				res := cl.batch(t, all)
				var mechs []string
				for _, mm := range mechanismRe.FindAllStringSubmatch(m.logs.String()[before:], -1) {
					mechs = append(mechs, mm[1])
				}
				t.Logf("%s: AUTH mechanisms used, in order: %v", cl.name, mechs)
				run = func(_ *testing.T, c matrixCase) (string, bool) { return res[c.subject].out, res[c.subject].ok }
			}
			for _, mode := range []string{"starttls", "implicit"} {
				t.Run(mode, func(t *testing.T) {
					c := cases[mode]
					before := len(m.logs.String())
					out, ok := run(t, c)
					a, arrived := up.arrived(c.subject)
					if !ok || !arrived {
						t.Fatalf("not delivered (client ok=%v, arrived=%v):\n%s", ok, arrived, out)
					}
					if a.rcpts != 1 {
						t.Errorf("upstream got %d recipients, want 1", a.rcpts)
					}
					mech := "?"
					if mm := mechanismRe.FindStringSubmatch(m.logs.String()[before:]); mm != nil {
						mech = mm[1]
					}
					t.Logf("%s %s: AUTH %s, SMTPUTF8 asked: %v", cl.name, mode, mech, a.utf8)
				})
				t.Run(mode+"_wrong_password", func(t *testing.T) {
					c := cases[mode+"_wrong_password"]
					out, ok := run(t, c)
					if ok {
						t.Fatalf("the client reported success with a wrong password:\n%s", out)
					}
					if !cl.authFailure.MatchString(out) {
						t.Errorf("the client's failure is not the AUTH refusal (want %s):\n%s", cl.authFailure, out)
					}
					if _, arrived := up.arrived(c.subject); arrived {
						t.Fatal("delivered with a wrong password")
					}
				})
				t.Run(mode+"_lf_line_ends", func(t *testing.T) {
					c := cases[mode+"_lf_line_ends"]
					out, ok := run(t, c)
					_, arrived := up.arrived(c.subject)
					if cl.lfRefusal == nil {
						if !ok || !arrived {
							t.Fatalf("LF line ends: not delivered (client ok=%v, arrived=%v):\n%s", ok, arrived, out)
						}
						return
					}
					if ok || arrived || !cl.lfRefusal.MatchString(out) {
						t.Fatalf("LF line ends: want the bare-LF refusal (%s), nothing delivered; ok=%v arrived=%v:\n%s",
							cl.lfRefusal, ok, arrived, out)
					}
				})
			}
		})
	}
	if logs := m.logs.String(); strings.Contains(logs, e2ePassword) || strings.Contains(logs, "wrong password") {
		t.Error("a password reached the log")
	}
}
