package deploy_test

// monitoring_test.go checks the Prometheus alert rules
// (prometheus/dzhook-rules.yaml) and the Grafana dashboard
// (grafana/dzhook.json): the rules load as Prometheus loads them, the
// dashboard is a Grafana dashboard whose every panel has a data source
// and PromQL targets, and every metric and label they name is one that a
// running dzhook really exports. That last check scrapes the /metrics of
// the dzhook binary TestMain built, run against a throwaway PostgreSQL
// and made to deliver, fail and be told 410 Gone, so that every labelled
// series exists. A metric renamed in internal/metrics without updating
// deploy/ fails it.
//
// The rules and expressions are read with Prometheus's own packages
// (model/rulefmt, promql/parser): the same code that loads rule_files,
// not an approximation of its grammar.

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// promQL parses as Prometheus does by default (no experimental functions).
var promQL = parser.NewParser(parser.Options{})

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// prometheusOwn are the series Prometheus itself makes for each target.
var prometheusOwn = exportedMetrics{"up": labelSet(targetLabels...)}

// alertSeverities are the severity labels the rules may carry.
var alertSeverities = []string{"warning", "critical"}

// exportedMetrics maps a series name to its labels, and each label to
// the values seen (nil: any value, as for the target labels).
type exportedMetrics map[string]labelValuesSeen

type labelValuesSeen map[string]map[string]bool

// labelSet has the names, with any value.
func labelSet(names ...string) labelValuesSeen {
	m := labelValuesSeen{}
	for _, n := range names {
		m[n] = nil
	}
	return m
}

func rulesPath() string     { return filepath.Join(env.deploy, "prometheus", "dzhook-rules.yaml") }
func dashboardPath() string { return filepath.Join(env.deploy, "grafana", "dzhook.json") }

// loadRules parses the rules file as Prometheus's rule_files loader does:
// unknown fields are errors, every expression and template is checked.
func loadRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(rulesPath(), false, model.UTF8Validation, promQL, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("rules: %v", err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatalf("%s: no rule groups", rulesPath())
	}
	return groups
}

func TestAlertRules(t *testing.T) {
	alerts := map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				continue
			}
			where := fmt.Sprintf("group %s, alert %s", g.Name, r.Alert)
			if alerts[r.Alert] {
				t.Errorf("%s: a second alert of that name", where)
			}
			alerts[r.Alert] = true
			if _, err := promQL.ParseExpr(r.Expr); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			// Without for:, one bad scrape pages someone.
			if r.For <= 0 {
				t.Errorf("%s: no for:", where)
			}
			if s := r.Labels["severity"]; !slices.Contains(alertSeverities, s) {
				t.Errorf("%s: severity %q, want one of %v", where, s, alertSeverities)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
		}
	}
	// What issue 19 asks the rules to watch, each by at least one alert.
	for _, want := range []string{
		"DzhookSubscriptionFailing", "DzhookSubscriptionDisabled",
		"DzhookDeliveriesBeyondRetrySchedule", "DzhookReplicationLagHigh", "DzhookRetainedWALHigh",
		"DzhookStreamNotStreaming", "DzhookHeartbeatStale", "DzhookDown", "DzhookAbsent",
	} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Panels     []panel        `json:"panels"` // a collapsed row's
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []struct {
		Datasource *datasourceRef `json:"datasource"`
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
	} `json:"targets"`
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(readFile(t, dashboardPath())))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardPath(), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("%s: more than one JSON value", dashboardPath())
	}
	return d
}

// grafanaVar is a dashboard variable in a query: $name, ${name} or
// ${name:format}.
var grafanaVar = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

// expandGrafana replaces the dashboard variables of a query with what
// Grafana would put there, so that Prometheus's parser can read it: a
// duration for the interval variables, and for the others (which belong
// in =~ matchers, being multi-valued) a regular expression of any value.
func expandGrafana(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		m := grafanaVar.FindStringSubmatch(v)
		switch m[1] + m[2] {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return ".*"
	})
}

// labelValues reads a Prometheus variable query: label_values(metric, label).
var labelValues = regexp.MustCompile(`^label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)$`)

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: want both", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want 36 or later (data source references by uid)", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no data source variable named datasource (variables: %v)", vars)
	}
	if vars["subscription"] != "query" {
		t.Errorf("no query variable named subscription (variables: %v)", vars)
	}
	ids := map[int]string{}
	queries := 0
	for _, p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if other, ok := ids[p.ID]; ok {
			t.Errorf("%s: id taken by %q", where, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("%s: no title", where)
		}
		if p.Type == "row" || p.Type == "text" {
			continue
		}
		if !isVariableDatasource(p.Datasource) {
			t.Errorf("%s: data source %+v, want the prometheus ${datasource}", where, p.Datasource)
		}
		if p.FieldConfig.Defaults.Unit == "" {
			t.Errorf("%s: no unit", where)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no targets", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			queries++
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("%s: refId %q empty or repeated", where, tg.RefID)
			}
			refs[tg.RefID] = true
			if !isVariableDatasource(tg.Datasource) {
				t.Errorf("%s, target %s: data source %+v, want the prometheus ${datasource}", where, tg.RefID, tg.Datasource)
			}
			if _, err := promQL.ParseExpr(expandGrafana(tg.Expr)); err != nil {
				t.Errorf("%s, target %s: %q: %v", where, tg.RefID, tg.Expr, err)
			}
		}
	}
	if queries == 0 {
		t.Error("the dashboard has no queries")
	}
	// Grafana moves overlapping panels on load; what the file says should
	// be what shows.
	ps := allPanels(d.Panels)
	for i, a := range ps {
		g := a.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %d %q: gridPos %+v outside the 24 columns", a.ID, a.Title, g)
		}
		for _, b := range ps[i+1:] {
			h := b.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap: %+v, %+v", a.Title, b.Title, g, h)
			}
		}
	}
}

func isVariableDatasource(ds *datasourceRef) bool {
	return ds != nil && ds.Type == "prometheus" && ds.UID == "${datasource}"
}

// TestMonitoringNamesExportedMetrics runs dzhook and checks every metric
// and label of the rules and the dashboard against its /metrics.
func TestMonitoringNamesExportedMetrics(t *testing.T) {
	exported := scrapeRunningDzhook(t)

	// The check itself must catch a made-up name and a made-up label.
	for _, bad := range []string{`dzhook_made_up_total`, `dzhook_queue_depth{made_up="x"}`, `{__name__=~"dzhook_.*"}`,
		`dzhook_subscription_state{state="failed"}`, `dzhook_deliveries_total{outcome=~"deliver"}`} {
		if len(exprProblems(bad, exported)) == 0 {
			t.Errorf("%s passes the check", bad)
		}
	}

	known := exportedMetrics{}
	for name, ls := range exported {
		known[name] = ls
	}
	for name, ls := range prometheusOwn {
		known[name] = ls
	}
	groups := loadRules(t)
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				known[r.Record] = nil // any label: it is computed from the others
			}
		}
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			for _, p := range exprProblems(r.Expr, known) {
				t.Errorf("rules, %s%s: %s", r.Alert, r.Record, p)
			}
		}
	}

	d := loadDashboard(t)
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			for _, problem := range exprProblems(expandGrafana(tg.Expr), known) {
				t.Errorf("dashboard, panel %q, target %s: %s", p.Title, tg.RefID, problem)
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("dashboard variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		if ls, ok := exported[m[1]]; !ok {
			t.Errorf("dashboard variable %s: dzhook exports no %s", v.Name, m[1])
		} else if _, ok := ls[m[2]]; !ok {
			t.Errorf("dashboard variable %s: %s has no label %s", v.Name, m[1], m[2])
		}
		if !strings.Contains(string(v.Query), v.Definition) {
			t.Errorf("dashboard variable %s: query %s differs from its definition %q", v.Name, v.Query, v.Definition)
		}
	}
}

// exprProblems lists the metrics and labels of a PromQL expression that
// known lacks (a nil label set accepts any label), and the = and =~
// matchers that select no value dzhook exports (state="failed" where the
// states are healthy, failing and disabled).
func exprProblems(expr string, known exportedMetrics) []string {
	e, err := promQL.ParseExpr(expr)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			problems = append(problems, fmt.Sprintf("%s names no metric", vs))
			return nil
		}
		ls, ok := known[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("dzhook exports no metric %s", name))
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName || ls == nil {
				continue
			}
			values, ok := ls[m.Name]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s has no label %s", name, m.Name))
				continue
			}
			if values == nil || (m.Type != labels.MatchEqual && m.Type != labels.MatchRegexp) {
				continue
			}
			matched := false
			for v := range values {
				matched = matched || m.Matches(v)
			}
			if !matched {
				problems = append(problems, fmt.Sprintf("%s{%s} selects none of the values dzhook exports: %v", name, m, sortedKeys(values)))
			}
		}
		return nil
	})
	return problems
}

// receiver is a webhook receiver that answers every request with status.
func receiver(t *testing.T, status int) (url string, got <-chan struct{}) {
	ch := make(chan struct{}, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
		select {
		case ch <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, ch
}

// scrapeRunningDzhook runs `dzhook run` against a throwaway database with
// three subscriptions — one delivered, one whose receiver answers 500
// until its one-attempt schedule is used up (failing), one that answers
// 410 (disabled) — makes one event, and returns what /metrics exports
// once every series the deliveries make is there.
func scrapeRunningDzhook(t *testing.T) exportedMetrics {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	okURL, okGot := receiver(t, http.StatusOK)
	brokenURL, brokenGot := receiver(t, http.StatusInternalServerError)
	goneURL, goneGot := receiver(t, http.StatusGone)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// The slot is named after the database: slot names are cluster-wide.
	config := fmt.Sprintf(`
source:
  dsn: %s
  slot: %s
  publication: %s
journal:
  heartbeat: 200ms
delivery:
  allow_insecure_http: true
  retry_schedule: [0s]
admin:
  listen: %s
  token: admin-token-for-tests
subscriptions:
  - {id: ok, url: %s, events: [request.created], secret: monitoring-test-secret}
  - {id: broken, url: %s, events: [request.created], secret: monitoring-test-secret}
  - {id: gone, url: %s, events: [request.created], secret: monitoring-test-secret}
`, db.DSN, db.Name, db.Name, addr, okURL, brokenURL, goneURL)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(env.bin, "run", "--config", path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("dzhook run did not stop within 30s of SIGTERM")
		}
	}()

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for code, _ := get("/readyz"); code != http.StatusOK; code, _ = get("/readyz") {
		select {
		case err := <-exited:
			t.Fatalf("dzhook run exited before it was ready: %v\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dzhook run: /readyz not 200 within 30s\n%s", out.String())
		}
	}

	db.Exec(t, `INSERT INTO requests (title, requester_id) VALUES ('monitoring', 1)`)
	for name, got := range map[string]<-chan struct{}{"ok": okGot, "broken": brokenGot, "gone": goneGot} {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatalf("receiver of subscription %s got nothing within 30s\n%s", name, out.String())
		}
	}

	// Counters are updated a moment after the receiver answered, the
	// journal's backlog is counted every few seconds: scrape until the
	// series of every outcome are there.
	wants := []string{
		`dzhook_attempt_errors_total{class="http",subscription="broken"}`,
		`dzhook_subscription_transitions_total{subscription="broken",to="failing"}`,
		`dzhook_subscription_transitions_total{subscription="gone",to="disabled"}`,
		`dzhook_subscription_state{state="failing",subscription="broken"} 1`,
		`dzhook_pending_deliveries{state="failed",subscription="broken"} 1`,
		`dzhook_deliveries_total{outcome="delivered",subscription="ok"}`,
		`dzhook_replication_lag_bytes `,
		`dzhook_replication_retained_wal_bytes `,
		`dzhook_heartbeat_timestamp_seconds `,
		`dzhook_journal_instances 1`,
	}
	var body string
	var missing []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		var code int
		code, body = get("/metrics")
		missing = nil
		for _, w := range wants {
			if !strings.Contains(body, w) {
				missing = append(missing, w)
			}
		}
		if code == http.StatusOK && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics (status %d) lacks, after 30s: %s\n%s", code, strings.Join(missing, ", "), body)
		}
		time.Sleep(200 * time.Millisecond)
	}

	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	exported := exportedMetrics{}
	for name, f := range families {
		ls := labelSet(targetLabels...)
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if ls[l.GetName()] == nil {
					ls[l.GetName()] = map[string]bool{}
				}
				ls[l.GetName()][l.GetValue()] = true
			}
		}
		switch f.GetType().String() {
		case "HISTOGRAM":
			exported[name+"_bucket"] = withLabel(ls, "le")
			exported[name+"_sum"], exported[name+"_count"] = ls, ls
		case "SUMMARY":
			exported[name] = withLabel(ls, "quantile")
			exported[name+"_sum"], exported[name+"_count"] = ls, ls
		default:
			exported[name] = ls
		}
	}
	return exported
}

// withLabel is a copy of ls with name added, with any value.
func withLabel(ls labelValuesSeen, name string) labelValuesSeen {
	out := labelSet(name)
	for l, v := range ls {
		out[l] = v
	}
	return out
}
