package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/internal/api"
	"github.com/dzdesk/dzhook/internal/config"
	"github.com/dzdesk/dzhook/internal/fanout"
)

// client talks to a running dzhook's admin API.
type client struct {
	base string
	// shown is base as messages show it: without user info, which may
	// hold a password (and without a query, which base may not have).
	shown string
	token string
	http  *http.Client
	// err is why base cannot be used, returned by every call.
	err error
}

// usageError is a mistake of the command line found after its flags
// were parsed: the command exits with exitUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// apiError is an answer of the API that is not 2xx.
type apiError struct {
	status int
	msg    string
	// problems are a refused body's, each with its field.
	problems []api.FieldProblem
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }

// adminFlags registers the flags every API command has.
func adminFlags(env *cli, fs *flag.FlagSet) (admin, config *string, asJSON *bool) {
	admin = fs.String("admin", env.getenv("DZHOOK_ADMIN_URL"), "admin API `URL` (env DZHOOK_ADMIN_URL; default from the config's admin.listen; without a config file, http://127.0.0.1:8080)")
	config = configFlag(env, fs)
	asJSON = fs.Bool("json", false, "print the API's JSON")
	return
}

// newClient finds the admin API: --admin, else the configuration's
// admin.listen; the token comes from DZHOOK_ADMIN_TOKEN, else the
// configuration's admin.token. Never from a flag: command lines are
// visible to every user of the machine.
func newClient(env *cli, admin, configPath string) *client {
	// Redirects are not followed: Go turns a DELETE or PATCH answered
	// 301 into a GET, whose 200 read as done (a proxy's http-to-https
	// redirect made "deleted crm" of a delete that deleted nothing).
	c := &client{base: admin, token: env.getenv("DZHOOK_ADMIN_TOKEN"), http: &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	elsewhere := admin != "" && !localOrTLS(admin)
	if c.base == "" || c.token == "" {
		cfg, err := config.LoadEnv(configPath, env.environ())
		if _, statErr := os.Stat(configPath); err != nil && statErr == nil {
			// A file that is there but does not load (an unset ${VAR},
			// a mistake): said, or the 401 or the refused connection
			// that follows would not say why. Its problems never show
			// a secret's value.
			fmt.Fprintf(env.stderr, "warning: %s not read, so the admin API's address and token are not taken from it: %v\n", configPath, err)
		}
		if err == nil && c.base == "" && cfg.Admin.Listen == "" {
			// The file's API is off: the default address is some other
			// server's (another dzhook, any program on 8080), and the
			// file's token went to it (found by a review).
			c.token = ""
			c.err = adminOff(configPath)
			return c
		}
		if err == nil {
			if c.base == "" {
				host, port, _ := net.SplitHostPort(cfg.Admin.Listen)
				if host == "" || host == "0.0.0.0" || host == "::" {
					host = "127.0.0.1"
				}
				c.base = "http://" + net.JoinHostPort(host, port)
			}
			if c.token == "" && elsewhere && cfg.Admin.Token.Reveal() != "" {
				// The configuration's token is its own API's: sent in
				// clear to an address typed on the command line, it went
				// to whatever host that named (found by a review).
				fmt.Fprintf(env.stderr, "warning: the configuration's admin.token is not sent to %s, a plain-http address not on this machine: set DZHOOK_ADMIN_TOKEN to send a token there\n", fanout.RedactURL(admin))
			} else if c.token == "" {
				c.token = cfg.Admin.Token.Reveal()
			}
		}
	}
	if c.base == "" {
		c.base = "http://127.0.0.1:8080"
	}
	c.base = strings.TrimRight(c.base, "/")
	c.shown = fanout.RedactURL(c.base)
	c.err = checkAdminURL(c.base)
	return c
}

// adminOff is the error of a command whose configuration (at path) has
// the admin API off, given no other address.
func adminOff(path string) error {
	return &usageError{fmt.Sprintf("the admin API is off in %s (admin.listen is empty): give --admin URL (or set DZHOOK_ADMIN_URL)", path)}
}

// localOrTLS reports whether the admin URL raw is https, or names this
// machine (localhost, a loopback address): where the configuration's
// token may go without DZHOOK_ADMIN_TOKEN. A URL that does not parse is
// refused later (checkAdminURL).
func localOrTLS(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return true
	}
	return u.Scheme == "https" || config.IsLoopback(u.Hostname())
}

// badToken says why a token cannot be sent, or nil. A token read from a
// file often ends in a newline: net/http refused the header, reported as
// "cannot reach" the API.
func badToken(token string) error {
	// A space inside can be sent (the server matches the whole value),
	// as the configuration's validation allows it.
	if token != strings.TrimSpace(token) || strings.ContainsFunc(token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return &usageError{"the admin token (DZHOOK_ADMIN_TOKEN, or the configuration's admin.token) has a space at either end, a line break or a control character: remove it"}
	}
	return nil
}

// Timeouts of the admin API's calls: an operator's attempt (a test, a
// retry of one delivery) may take the server up to 55 s (the receiver's
// delivery.timeout, its own bound), any other call far less.
const (
	callTimeout    = 30 * time.Second
	attemptTimeout = 70 * time.Second
)

// checkAdminURL returns why raw cannot be the admin API's URL, or nil.
// The message never quotes raw whole: its user info or query may hold a
// credential (a token put in ?token=, where it would also have been sent
// as part of every path).
func checkAdminURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return &usageError{"the admin URL is not a valid URL: give http://host:port, e.g. http://127.0.0.1:8080"}
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return &usageError{fmt.Sprintf("the admin URL %s must not have a ?query or #fragment: it is the API's base URL; give the token in DZHOOK_ADMIN_TOKEN", fanout.RedactURL(raw))}
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return &usageError{fmt.Sprintf("the admin URL %s is not http://host:port or https://host:port", fanout.RedactURL(raw))}
	}
	return nil
}

// withoutURL is err without the URL that net/http puts in its errors:
// that URL is the one requested, user info (less its password) and all.
// The messages name the API by c.shown instead.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// do calls the API and decodes its JSON answer into out (and returns the
// raw bytes for --json).
func (c *client) do(ctx context.Context, method, path string, body any, out any) ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	if err := badToken(c.token); err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	timeout := callTimeout
	if method == http.MethodPost && (strings.HasSuffix(path, "/test") || strings.HasSuffix(path, "/retry")) {
		timeout = attemptTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, &usageError{fmt.Sprintf("admin URL %s: %v", c.shown, withoutURL(err))}
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("dzhook's admin API at %s gave no answer within %s (the action may have been made: look before trying again)", c.shown, timeout)
		}
		return nil, fmt.Errorf("cannot reach dzhook's admin API at %s (is `dzhook run` running? --admin sets the address): %w", c.shown, withoutURL(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return raw, fmt.Errorf("the admin API at %s answered HTTP %d, a redirect to %s: not followed (a method would change on the way); give --admin the address it points at",
			c.shown, resp.StatusCode, printable(fanout.RedactURL(resp.Header.Get("Location")), false))
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		var e api.ValidationErrors // api.Error, and a body's problems
		if json.Unmarshal(raw, &e) != nil || e.Message == "" {
			e.Message = bodyText(raw)
		}
		// Whatever the server said, shown, never obeyed by the terminal
		// (an escape in a JSON error wrote the clipboard and cleared the
		// screen).
		e.Message = printable(e.Message, true)
		for i := range e.Errors {
			e.Errors[i].Field, e.Errors[i].Problem = printable(e.Errors[i].Field, false), printable(e.Errors[i].Problem, true)
		}
		if resp.StatusCode == http.StatusUnauthorized && c.token == "" && !strings.Contains(e.Message, "DZHOOK_ADMIN_TOKEN") {
			e.Message += "; set DZHOOK_ADMIN_TOKEN"
		}
		return raw, &apiError{status: resp.StatusCode, msg: e.Message, problems: e.Errors}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("unexpected answer from %s: %w", c.shown, err)
		}
	}
	return raw, nil
}

// maxBodyText bounds what is shown of an error answer that is not the
// API's JSON.
const maxBodyText = 200

// htmlTitle is an HTML page's title: a proxy's error page ("502 Bad
// Gateway") says what happened there.
var htmlTitle = regexp.MustCompile(`(?is)<title[^>]*>(.*?)</title>`)

// bodyText is what an error answer that is not the API's JSON says: a
// proxy's HTML page was printed whole, and an empty body printed
// "dzhook status:  (HTTP 500)". It is the page's title, else the first
// line, at most maxBodyText bytes.
func bodyText(raw []byte) string {
	s := strings.TrimSpace(string(raw))
	if m := htmlTitle.FindStringSubmatch(s); m != nil {
		s = strings.TrimSpace(m[1])
	}
	if line, _, cut := strings.Cut(s, "\n"); cut {
		s = strings.TrimSpace(line) + " …"
	}
	if s == "" {
		return "no error message from the server"
	}
	if len(s) > maxBodyText {
		i := maxBodyText
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = strings.TrimSpace(s[:i]) + " …"
	}
	return s
}

// fail prints an API error and returns the exit code. A refused body's
// problems are printed one a line, "field: problem".
func fail(env *cli, cmd string, err error) int {
	var ae *apiError
	if errors.As(err, &ae) && len(ae.problems) > 0 {
		fmt.Fprintf(env.stderr, "dzhook %s: refused (HTTP %d):\n", cmd, ae.status)
		for _, p := range ae.problems {
			fmt.Fprintf(env.stderr, "  %s: %s\n", printable(p.Field, false), printable(p.Problem, false))
		}
	} else {
		fmt.Fprintf(env.stderr, "dzhook %s: %v\n", cmd, err)
	}
	var ue *usageError
	if (ae != nil && ae.status == http.StatusBadRequest) || errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// parseArgs parses flags that may come before or after positional
// arguments (dzhook retry ID --json).
func parseArgs(fs *flag.FlagSet, args []string) (pos []string, code int, stop bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, true
			}
			return nil, exitUsage, true
		}
		if fs.NArg() == 0 {
			return pos, 0, false
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// newTable is a table over w whose cells are shown, never obeyed by the
// terminal: the server's text (an id, a state, an event name; a server
// that is not dzhook may send anything) has its control characters
// escaped, the table's tabs and line ends kept.
func newTable(w io.Writer) table { return table{tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)} }

type table struct{ tw *tabwriter.Writer }

func (t table) Write(p []byte) (int, error) {
	if _, err := io.WriteString(t.tw, printable(string(p), true)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t table) Flush() error { return t.tw.Flush() }

func when(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// printable makes text from outside (a receiver's answer, an error it
// caused, a server that is not dzhook) safe for a terminal: control
// characters, which can move the cursor, rewrite what is shown or set
// the clipboard, are written as \xNN escapes. Newlines and tabs stay
// when keepLines.
func printable(s string, keepLines bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case keepLines && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func intOrDash(p *int) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

// query builds a query string from the set values.
func query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Set(kv[i], kv[i+1])
		}
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}
