package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminURLNeverPrinted: the admin URL's user info and query may hold
// a credential, and no message prints them; a URL with a query or a
// fragment is refused (the token goes in DZHOOK_ADMIN_TOKEN), and one
// that does not parse is not quoted. Port 1 of the loopback refuses
// connections, so every call fails at once.
func TestAdminURLNeverPrinted(t *testing.T) {
	const secret = "PLANTEDPASS"
	for _, tc := range []struct {
		name  string
		args  []string
		env   []string
		code  int
		wants []string
	}{
		{"user info", []string{"status", "--admin", "http://u:" + secret + "@127.0.0.1:1"}, nil, exitFailure,
			[]string{"cannot reach dzhook's admin API at http://127.0.0.1:1 "}},
		{"user info from the environment", []string{"subscriptions", "list"}, []string{"DZHOOK_ADMIN_URL=http://" + secret + "@127.0.0.1:1/"}, exitFailure,
			[]string{"at http://127.0.0.1:1 "}},
		{"user info, health", []string{"health", "--admin", "http://u:" + secret + "@127.0.0.1:1"}, nil, exitFailure,
			[]string{"dzhook health: http://127.0.0.1:1 does not answer"}},
		{"token in the query", []string{"status", "--admin", "http://127.0.0.1:1/?token=" + secret}, nil, exitUsage,
			[]string{"must not have a ?query or #fragment", "DZHOOK_ADMIN_TOKEN"}},
		{"token in the query, health", []string{"health", "--admin", "http://127.0.0.1:1?token=" + secret}, nil, exitUsage,
			[]string{"must not have a ?query or #fragment"}},
		{"fragment", []string{"deliveries", "--admin", "http://127.0.0.1:1/#" + secret}, nil, exitUsage,
			[]string{"must not have a ?query or #fragment"}},
		{"empty fragment", []string{"status", "--admin", "http://u:" + secret + "@127.0.0.1:1#"}, nil, exitUsage,
			[]string{"must not have a ?query or #fragment"}},
		{"unparseable", []string{"status", "--admin", "http://u:" + secret + " x@127.0.0.1:1"}, nil, exitUsage,
			[]string{"the admin URL is not a valid URL"}},
		{"unparseable, health", []string{"health", "--admin", "http://u:" + secret + "@[::1"}, nil, exitUsage,
			[]string{"the admin URL is not a valid URL"}},
		{"no scheme", []string{"status", "--admin", secret + ".example:8080"}, nil, exitUsage,
			[]string{"is not http://host:port"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			env := append([]string{"DZHOOK_CONFIG=testdata/none.yaml"}, tc.env...)
			code := runEnv(context.Background(), append([]string{"dzhook"}, tc.args...), &out, &errb, env)
			stderr := errb.String()
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			if strings.Contains(stderr+out.String(), secret) {
				t.Errorf("the output shows the credential:\n%s", stderr)
			}
			for _, w := range tc.wants {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestHeaderValueNeverPrinted: a malformed --header is refused naming at
// most the header, never its value, which is often a credential. The
// flag package quotes the whole argument of a Set that fails, so the
// flag never fails there. No server is needed: the command stops first.
func TestHeaderValueNeverPrinted(t *testing.T) {
	const secret = "PLANTEDSECRET"
	for _, tc := range []struct {
		header, want string
	}{
		{"Authorization: Bearer " + secret, "--header Authorization: write NAME=VALUE (Authorization=…), not NAME: VALUE"},
		{"Authorization:Bearer=" + secret, "--header Authorization: write NAME=VALUE"},
		{"Bearer " + secret, "a --header is not NAME=VALUE"},
		{secret, "a --header is not NAME=VALUE"},
		{"=" + secret, "a --header is not NAME=VALUE"},
		{"Bearer " + secret + "==", "a --header does not start with a valid header name"},
	} {
		for _, verb := range [][]string{
			{"subscriptions", "create", "--url", "https://x.example.com", "--events", "*"},
			{"subscriptions", "update", "crm"},
		} {
			args := append([]string{"dzhook"}, verb...)
			args = append(args, "--header", "X-Key="+secret, "--header", tc.header)
			var out, errb bytes.Buffer
			code := runEnv(context.Background(), args, &out, &errb, []string{"DZHOOK_ADMIN_URL=http://127.0.0.1:1", "DZHOOK_CONFIG=testdata/none.yaml"})
			stderr := errb.String()
			if code != exitUsage {
				t.Errorf("%s --header %q: exit %d, want 2", verb[1], tc.header, code)
			}
			if strings.Contains(stderr+out.String(), secret) {
				t.Errorf("%s --header %q: the output shows the value:\n%s", verb[1], tc.header, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("%s --header %q: stderr lacks %q:\n%s", verb[1], tc.header, tc.want, stderr)
			}
		}
	}
}

// TestConfigTokenStaysLocal: the configuration's admin.token goes to the
// configuration's own API, to this machine, or over https; to a plain-http
// address elsewhere named on the command line it is not sent (it went in
// clear to whatever host that was), and a warning says how to send one.
func TestConfigTokenStaysLocal(t *testing.T) {
	const token = "config-admin-token-0123456789"
	cfg := filepath.Join(t.TempDir(), "dzhook.yaml")
	if err := os.WriteFile(cfg, []byte("source: {dsn: \"postgres://dz@127.0.0.1:1/dz\"}\nadmin: {listen: \"0.0.0.0:8080\", token: "+token+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		admin, envToken, want string
		warned                bool
	}{
		{"", "", token, false},
		{"http://127.0.0.1:9090", "", token, false},
		{"http://localhost:9090", "", token, false},
		{"http://[::1]:9090", "", token, false},
		{"https://ops.example.com", "", token, false},
		{"http://ops.example.com:8080", "", "", true},
		{"http://10.1.2.3:8080", "", "", true},
		{"http://ops.example.com:8080", "env-admin-token-0123456789", "env-admin-token-0123456789", false},
	} {
		var errb bytes.Buffer
		env := &cli{stdout: io.Discard, stderr: &errb, getenv: func(k string) string {
			if k == "DZHOOK_ADMIN_TOKEN" {
				return tc.envToken
			}
			return ""
		}, environ: func() []string { return nil }}
		c := newClient(env, tc.admin, cfg)
		if c.token != tc.want {
			t.Errorf("--admin %q: token %q, want %q", tc.admin, c.token, tc.want)
		}
		if warned := strings.Contains(errb.String(), "admin.token is not sent to"); warned != tc.warned {
			t.Errorf("--admin %q: warned %v, want %v: %q", tc.admin, warned, tc.warned, errb.String())
		}
		if strings.Contains(errb.String(), token) {
			t.Errorf("--admin %q: the warning shows the token", tc.admin)
		}
	}
}

// TestBadToken: a token no request can carry (a space at either end, a
// line break, a control character) is refused before any call; one with
// a space inside is sent, as the server and the configuration take it.
func TestBadToken(t *testing.T) {
	for token, bad := range map[string]bool{
		"tok-0123456789abcdef":   false,
		"tok-01234567 89abcdef":  false,
		"tok-0123456789abcdef ":  true,
		" tok-0123456789abcdef":  true,
		"tok-0123456789abcdef\n": true,
		"tok-01234567\x0089abcd": true,
	} {
		if err := badToken(token); (err != nil) != bad {
			t.Errorf("badToken(%q) = %v, want refused %v", token, err, bad)
		}
	}
}

// TestAdminOffInConfig: with the file's admin API off (admin.listen
// empty) and no --admin nor DZHOOK_ADMIN_URL, a command stops with a
// usage error before any request: it sent the file's admin.token to
// whatever listened on the default 127.0.0.1:8080. An address given
// still works, with the file's token where it may go.
func TestAdminOffInConfig(t *testing.T) {
	const token = "config-admin-token-0123456789"
	cfg := filepath.Join(t.TempDir(), "dzhook.yaml")
	if err := os.WriteFile(cfg, []byte("source: {dsn: \"postgres://dz@127.0.0.1:1/dz\"}\nadmin: {listen: \"\", token: "+token+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, envToken := range []string{"", "env-admin-token-0123456789"} {
		env := &cli{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string {
			if k == "DZHOOK_ADMIN_TOKEN" {
				return envToken
			}
			return ""
		}, environ: func() []string { return nil }}
		c := newClient(env, "", cfg)
		var ue *usageError
		if !errors.As(c.err, &ue) || !strings.Contains(c.err.Error(), "the admin API is off in "+cfg+" (admin.listen is empty): give --admin URL") {
			t.Errorf("DZHOOK_ADMIN_TOKEN %q: err %v, want the admin API off", envToken, c.err)
		}
		if c.token == token {
			t.Errorf("DZHOOK_ADMIN_TOKEN %q: the file's token is kept for %q", envToken, c.base)
		}
		if _, err := c.do(context.Background(), "GET", "/v1/subscriptions", nil, nil); err != c.err {
			t.Errorf("DZHOOK_ADMIN_TOKEN %q: a call gives %v, want the client's error", envToken, err)
		}

		c = newClient(env, "http://127.0.0.1:9090", cfg)
		if c.err != nil || c.base != "http://127.0.0.1:9090" {
			t.Errorf("--admin given: err %v, base %q", c.err, c.base)
		}
		if want := cmp.Or(envToken, token); c.token != want {
			t.Errorf("--admin given: token %q, want %q", c.token, want)
		}
	}
	for _, args := range [][]string{{"status"}, {"retry", "dlv_1"}, {"health"}} {
		var out, errb bytes.Buffer
		code := runEnv(context.Background(), append([]string{"dzhook"}, append(args, "--config", cfg)...), &out, &errb, nil)
		if code != exitUsage || !strings.Contains(errb.String(), "the admin API is off in") {
			t.Errorf("%v: exit %d, want %d; stderr:\n%s", args, code, exitUsage, errb.String())
		}
		if strings.Contains(out.String()+errb.String(), token) {
			t.Errorf("%v: the output shows the token", args)
		}
	}
}

// TestErrorBodyNotJSON: an error answer that is not the API's JSON is
// shown as one short line: an empty body printed "dzhook status:  (HTTP
// 500)", a proxy's HTML page was printed whole.
func TestErrorBodyNotJSON(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes, cut on a character's boundary
	for _, tc := range []struct {
		status  int
		body    string
		want    string
		wantNot []string
	}{
		{500, "", "dzhook status: no error message from the server (HTTP 500)", nil},
		{500, " \r\n ", "dzhook status: no error message from the server (HTTP 500)", nil},
		{502, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
			"dzhook status: 502 Bad Gateway (HTTP 502)", []string{"<", "nginx"}},
		{503, "upstream connect error\nreset reason: overflow\n", "dzhook status: upstream connect error … (HTTP 503)", []string{"overflow"}},
		{500, long, "dzhook status: " + strings.Repeat("é", 100) + " … (HTTP 500)", nil},
		{409, `{"error":"subscription crm is paused"}`, "dzhook status: subscription crm is paused (HTTP 409)", nil},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		}))
		var out, errb bytes.Buffer
		code := runEnv(context.Background(), []string{"dzhook", "status"}, &out, &errb, []string{"DZHOOK_ADMIN_URL=" + srv.URL, "DZHOOK_CONFIG=testdata/none.yaml", "DZHOOK_ADMIN_TOKEN=" + cliToken})
		srv.Close()
		stderr := errb.String()
		if code != exitFailure || strings.TrimSpace(stderr) != tc.want {
			t.Errorf("HTTP %d %q: exit %d, stderr %q; want exit 1, %q", tc.status, tc.body, code, stderr, tc.want)
		}
		for _, no := range tc.wantNot {
			if strings.Contains(stderr, no) {
				t.Errorf("HTTP %d: stderr shows %q: %q", tc.status, no, stderr)
			}
		}
	}
}
