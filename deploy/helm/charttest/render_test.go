package charttest

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/getter"
	release "helm.sh/helm/v4/pkg/release/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the chart")

// chartDir is the chart under test.
const chartDir = "../dzhook"

// rendered is one render of the chart.
type rendered struct {
	manifest string // every document, as `helm template` prints them
	notes    string // NOTES.txt
}

// render renders the chart with the value files given, in order, as
// `helm template dzhook deploy/helm/dzhook -n dzdesk -f …` does: values
// are checked against values.schema.json first.
func render(t *testing.T, valueFiles ...string) (rendered, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart %s: %v", chartDir, err)
	}
	vals, err := (&values.Options{ValueFiles: valueFiles}).MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("values %v: %v", valueFiles, err)
	}
	install := action.NewInstall(action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler)))
	install.DryRunStrategy = action.DryRunClient // no cluster: `helm template`
	install.ReleaseName = "dzhook"
	install.Namespace = "dzdesk"
	install.Replace = true
	// The oldest Kubernetes the chart supports (Chart.yaml, kubeVersion:
	// unhealthyPodEvictionPolicy is on by default from 1.27).
	kv, err := common.ParseKubeVersion("v1.27.0")
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return rendered{}, err
	}
	r, ok := rel.(*release.Release)
	if !ok {
		t.Fatalf("install returned a %T, want *release.Release", rel)
	}
	if len(r.Hooks) > 0 {
		t.Fatalf("the chart has %d hooks; the goldens only hold the manifest", len(r.Hooks))
	}
	return rendered{manifest: r.Manifest, notes: r.Info.Notes}, nil
}

// goldenCases are the renders deploy/helm_test.go validates: name → value
// files. Each example's values file is rendered as the README says.
var goldenCases = []struct {
	name   string
	values []string
}{
	{"default", []string{"testdata/required.values.yaml"}},
	{"servicemonitor", []string{"testdata/required.values.yaml", "testdata/servicemonitor.values.yaml"}},
	{"replicas", []string{"testdata/required.values.yaml", "testdata/replicas.values.yaml"}},
	{"zalando-postgres-operator", []string{"../examples/zalando-postgres-operator-values.yaml"}},
	{"cloudnativepg", []string{"../examples/cloudnativepg-values.yaml"}},
}

// TestGolden renders every case and compares it with its golden file
// (-update rewrites them).
func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			r, err := render(t, c.values...)
			if err != nil {
				t.Fatalf("render with %v: %v", c.values, err)
			}
			for _, bad := range []string{"<no value>", "%!"} {
				if strings.Contains(r.manifest+r.notes, bad) {
					t.Errorf("the render holds %q: a template reads a value that is not there\n%s\n%s", bad, r.manifest, r.notes)
				}
			}
			path := filepath.Join("testdata", c.name+".golden.yaml")
			got := "# helm template dzhook deploy/helm/dzhook -n dzdesk -f " + strings.Join(c.values, " -f ") +
				"\n# Rendered by deploy/helm/charttest (go test -run TestGolden -update); validated by deploy/helm_test.go.\n" + r.manifest
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -run TestGolden -update writes it)", err)
			}
			if got != string(want) {
				t.Errorf("%s is out of date with the chart: run `go test -run TestGolden -update` in deploy/helm/charttest and review the diff", path)
			}
		})
	}
}

// TestServiceMonitorOnlyWhenEnabled checks that the Prometheus operator's
// CRD is only needed by those who ask for it.
func TestServiceMonitorOnlyWhenEnabled(t *testing.T) {
	for _, c := range []struct {
		values []string
		want   bool
	}{
		{[]string{"testdata/required.values.yaml"}, false},
		{[]string{"testdata/required.values.yaml", "testdata/servicemonitor.values.yaml"}, true},
	} {
		r, err := render(t, c.values...)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(r.manifest, "\nkind: ServiceMonitor\n"); got != c.want {
			t.Errorf("values %v: ServiceMonitor rendered: %v, want %v", c.values, got, c.want)
		}
	}
}

// TestNotes checks that NOTES.txt renders and tells the next steps.
func TestNotes(t *testing.T) {
	for _, c := range goldenCases {
		r, err := render(t, c.values...)
		if err != nil {
			t.Fatal(err)
		}
		wants := []string{"wal_level=logical", "deploy/sql/role.sql", "kubectl port-forward -n dzdesk svc/dzhook 8080:8080", "admin-token):\n\n  kubectl exec"}
		if strings.Contains(c.name, "zalando") {
			// The operator's pods, not the chart's labels.
			wants = append(wants, "-l application=spilo,cluster-name=dzdesk-db -c dzhook")
		} else {
			wants = append(wants, "-l app.kubernetes.io/instance=dzhook -c dzhook", "deploy/dzhook -c dzhook -- dzhook status")
		}
		for _, want := range wants {
			if !strings.Contains(r.notes, want) {
				t.Errorf("%s: NOTES.txt lacks %q:\n%s", c.name, want, r.notes)
			}
		}
	}
}

// TestBadValues checks that wrong values fail the install with a message
// that names the value, before anything reaches a cluster.
func TestBadValues(t *testing.T) {
	for _, c := range []struct {
		name   string
		values string // YAML, after testdata/required.values.yaml unless noRequired
		noReq  bool
		want   []string // substrings of the error
	}{
		{"negative replicas", "replicaCount: -1\n", false, []string{"replicaCount", "minimum"}},
		{"no DSN", "secret:\n  adminToken: 0123456789abcdef0123\n", true, []string{"sourceDSN"}},
		{"no admin token", "secret:\n  sourceDSN: postgres://dzhook@db/dzdesk\n", true, []string{"adminToken"}},
		{"short admin token", "secret:\n  adminToken: short\n", false, []string{"adminToken", "minLength"}},
		{"DSN that is no DSN", "secret:\n  sourceDSN: db.internal:5432\n", false, []string{"secret.sourceDSN is neither", "not shown"}},
		{"existing Secret without its name", "secret:\n  create: false\n", false, []string{"existingSecret"}},
		{"unknown key", "replicas: 2\n", false, []string{"replicas", "additional properties"}},
		{"bad readiness path", "readinessProbe:\n  path: /metrics\n", false, []string{"readinessProbe", "path"}},
		{"setup without the owner's DSN", "setup:\n  enabled: true\n", false, []string{"secretName"}},
		{"sidecar without a pod selector", "sidecar:\n  enabled: true\n", false, []string{"podSelector"}},
		{"bad ${NAME}", "secret:\n  webhookSecrets:\n    crm-secret: x\n", false, []string{"crm-secret", "pattern"}},
		{"admin.listen in config", "config:\n  admin:\n    listen: 127.0.0.1:9090\n", false, []string{"config.admin.listen", "adminPort"}},
		{"a drain longer than the stop time", "config:\n  delivery:\n    timeout: 45s\n", false, []string{"terminationGracePeriodSeconds (30)", "55 s"}},
		{"a drain in several units", "config:\n  delivery:\n    timeout: 40s500ms\nterminationGracePeriodSeconds: 40\n", false, []string{"51 s"}},
		{"a drain set through extraEnv", "extraEnv:\n  - name: DZHOOK_DELIVERY_TIMEOUT\n    value: 30s\n", false, []string{"terminationGracePeriodSeconds (30)", "40 s"}},
		{"a timeout dzhook refuses", "config:\n  delivery:\n    timeout: 2m\nterminationGracePeriodSeconds: 300\n", false, []string{"config.delivery.timeout (2m)", "from 100ms to 50s"}},
		{"a timeout just past 50s", "config:\n  delivery:\n    timeout: 50s1ms\nterminationGracePeriodSeconds: 300\n", false, []string{"config.delivery.timeout (50s1ms)"}},
		{"a timeout under 100ms", "config:\n  delivery:\n    timeout: 50ms\n", false, []string{"config.delivery.timeout (50ms)"}},
		{"a decimal timeout past 50s", "config:\n  delivery:\n    timeout: 50.5s\nterminationGracePeriodSeconds: 300\n", false, []string{"config.delivery.timeout (50.5s)"}},
		{"a decimal timeout under 100ms", "config:\n  delivery:\n    timeout: 0.05s\n", false, []string{"config.delivery.timeout (0.05s)"}},
		{"a decimal drain longer than the stop time", "config:\n  delivery:\n    timeout: 45.5s\n", false, []string{"terminationGracePeriodSeconds (30)", "56 s"}},
		{"a timeout with a unit Go does not read", "config:\n  delivery:\n    timeout: 5sec\n", false, []string{"config.delivery.timeout (5sec)"}},
		{"a reference with a drain too long for the stop time", "config:\n  delivery:\n    timeout: \"${DELIVERY_TIMEOUT:-5s}\"\n", false, []string{"terminationGracePeriodSeconds (30)", "60 s"}},
		{"a timeout that is not a duration", "config:\n  delivery:\n    timeout: soon\n", false, []string{"config.delivery.timeout (soon)"}},
		{"a refused timeout through extraEnv", "extraEnv:\n  - name: DZHOOK_DELIVERY_TIMEOUT\n    value: 90s\nterminationGracePeriodSeconds: 300\n", false, []string{"config.delivery.timeout (90s)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.values.yaml")
			if err := os.WriteFile(path, []byte(c.values), 0o600); err != nil {
				t.Fatal(err)
			}
			files := []string{"testdata/required.values.yaml", path}
			if c.noReq {
				files = files[1:]
			}
			_, err := render(t, files...)
			if err == nil {
				t.Fatalf("values %q rendered; want an error naming %v", c.values, c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestSourceDSNForm: secret.sourceDSN takes a URL or libpq's
// keyword/value form, and refuses anything else without repeating it: it
// may hold a password, which the schema pattern it had before printed in
// Helm's error (found by a review), and the keyword/value form dzhook
// reads was refused.
func TestSourceDSNForm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsn.values.yaml")
	for _, c := range []struct {
		dsn string
		ok  bool
	}{
		{"postgres://dzhook:S3cretPass@db:5432/dzdesk?sslmode=require", true},
		{"postgresql://dzhook@db/dzdesk", true},
		{"host=db dbname=dzdesk user=dzhook password=S3cretPass", true},
		{" host = db dbname=dzdesk", true},
		{"S3cretPass", false},
		{"db.internal:5432 password=S3cretPass", false},
		{"mysql://dzhook:S3cretPass@db/dzdesk", false},
	} {
		values := fmt.Sprintf("secret:\n  adminToken: 0123456789abcdef0123\n  sourceDSN: %q\n", c.dsn)
		if err := os.WriteFile(path, []byte(values), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := render(t, path)
		switch {
		case c.ok && err != nil:
			t.Errorf("sourceDSN %q: %v", c.dsn, err)
		case !c.ok && err == nil:
			t.Errorf("sourceDSN %q rendered; want it refused", c.dsn)
		case !c.ok && (strings.Contains(err.Error(), "S3cretPass") || !strings.Contains(err.Error(), "secret.sourceDSN is neither")):
			t.Errorf("sourceDSN %q: error %q; want it named, its value not shown", c.dsn, err)
		}
	}
}

// TestRequiredValuesOnly checks the default values alone fail, naming what
// to set: there is no working default for a DSN or a token.
func TestRequiredValuesOnly(t *testing.T) {
	_, err := render(t)
	if err == nil {
		t.Fatal("the chart rendered without a DSN or an admin token")
	}
	for _, w := range []string{"sourceDSN", "adminToken"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
}

// TestExistingSecret checks that secret.create: false makes no Secret and
// points every variable at the named one, secrets.key optionally (the
// chart cannot know whether that Secret has it).
func TestExistingSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "existing.values.yaml")
	const vals = "secret:\n  create: false\n  existingSecret: dzhook-from-vault\n  webhookSecrets:\n    CRM_WEBHOOK_SECRET: \"\"\n"
	if err := os.WriteFile(path, []byte(vals), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := render(t, path)
	if err != nil {
		t.Fatalf("render with an existing Secret: %v", err)
	}
	if strings.Contains(r.manifest, "\nkind: Secret\n") {
		t.Errorf("secret.create: false rendered a Secret")
	}
	for _, key := range []string{"source-dsn", "admin-token", "secrets-key", "CRM_WEBHOOK_SECRET"} {
		want := "name: dzhook-from-vault\n                  key: " + key + "\n"
		if !strings.Contains(r.manifest, want) {
			t.Errorf("no env from key %s of the existing Secret (want %q)", key, want)
		}
	}
	if !strings.Contains(r.manifest, "key: secrets-key\n                  optional: true\n") {
		t.Errorf("secrets-key of an existing Secret is not optional")
	}
}

// TestLint runs Helm's linter with each case's values as `helm lint
// --strict` does (Chart.yaml, values, templates, the schema): no warning
// or error. (Information stays: dzhook has no icon.)
func TestLint(t *testing.T) {
	kv, err := common.ParseKubeVersion("v1.27.0")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range goldenCases {
		vals, err := (&values.Options{ValueFiles: c.values}).MergeValues(getter.Providers{})
		if err != nil {
			t.Fatal(err)
		}
		l := lint.RunAll(chartDir, vals, "dzdesk", lint.WithKubeVersion(kv))
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("%s: helm lint: %s", c.name, m)
			}
		}
	}
}

// TestDrainFitsTheStopTime: a longer delivery.timeout renders once the
// pod's stop time covers its drain, up to the bounds dzhook holds it to.
func TestDrainFitsTheStopTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drain.values.yaml")
	for _, c := range []struct {
		timeout string
		stop    int
	}{{"500ms", 11}, {"45s", 55}, {"100ms", 11}, {"50s", 60}, {"49s1000ms", 60}, {"0.1m", 16}, {"100000us", 11}, {"1.5s", 12}, {".5s", 11}, {"50000000us", 60}, {"0.5m", 40}, {"+5s", 15},
		{`"${DELIVERY_TIMEOUT:-5s}"`, 60}} { // a reference dzhook expands: the longest drain
		values := fmt.Sprintf("config:\n  delivery:\n    timeout: %s\nterminationGracePeriodSeconds: %d\n", c.timeout, c.stop)
		if err := os.WriteFile(path, []byte(values), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := render(t, "testdata/required.values.yaml", path); err != nil {
			t.Errorf("timeout %s with %d s to stop: %v", c.timeout, c.stop, err)
		}
	}
}
