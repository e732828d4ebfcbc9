package deploy_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// obj is one decoded YAML mapping.
type obj = map[string]any

// decodeYAMLDocs decodes every document of a YAML stream.
func decodeYAMLDocs(t *testing.T, path string) []obj {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader([]byte(readFile(t, path))))
	var docs []obj
	for {
		var doc obj
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// Accessors for decoded YAML; a missing or mistyped value is the zero value.

func get(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(obj)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func str(v any, path ...string) string {
	switch x := get(v, path...).(type) {
	case string:
		return x
	case int, bool, float64:
		return fmt.Sprint(x)
	}
	return ""
}

func list(v any, path ...string) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func strs(v any, path ...string) []string {
	var out []string
	for _, x := range list(v, path...) {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func boolean(v any, path ...string) (value, set bool) {
	b, ok := get(v, path...).(bool)
	return b, ok
}

// k8s is the decoded deploy/kubernetes directory.
type k8s struct {
	docs       map[string][]obj             // file → documents
	secrets    map[string]map[string]string // name → key → value
	configMaps map[string]map[string]string
	services   []obj
	sets       []obj // StatefulSets
}

func loadK8s(t *testing.T) *k8s {
	t.Helper()
	dir := filepath.Join(env.deploy, "kubernetes")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	k := newK8s()
	for _, f := range files {
		k.add(t, filepath.Base(f), decodeYAMLDocs(t, f))
	}
	return k
}

func newK8s() *k8s {
	return &k8s{docs: make(map[string][]obj), secrets: make(map[string]map[string]string), configMaps: make(map[string]map[string]string)}
}

// add indexes the documents of one file (file names the messages).
func (k *k8s) add(t *testing.T, file string, docs []obj) {
	t.Helper()
	k.docs[file] = append(k.docs[file], docs...)
	for _, d := range docs {
		name := str(d, "metadata", "name")
		switch str(d, "kind") {
		case "Secret":
			vals := make(map[string]string)
			for key, v := range asMap(get(d, "stringData")) {
				vals[key] = fmt.Sprint(v)
			}
			for key, v := range asMap(get(d, "data")) {
				b, err := base64.StdEncoding.DecodeString(fmt.Sprint(v))
				if err != nil {
					t.Errorf("%s: Secret %s data.%s: %v", file, name, key, err)
				}
				vals[key] = string(b)
			}
			k.secrets[name] = vals
		case "ConfigMap":
			vals := make(map[string]string)
			for key, v := range asMap(get(d, "data")) {
				vals[key] = fmt.Sprint(v)
			}
			k.configMaps[name] = vals
		case "Service":
			k.services = append(k.services, d)
		case "StatefulSet":
			k.sets = append(k.sets, d)
		}
	}
}

func asMap(v any) obj {
	m, _ := v.(obj)
	return m
}

// container returns the pod's container of that name.
func container(pod any, name string) obj {
	for _, c := range list(pod, "containers") {
		if str(c, "name") == name {
			return asMap(c)
		}
	}
	return nil
}

// containerEnv resolves a container's env as the kubelet would: literal
// values, and secretKeyRef/configMapKeyRef from the manifests.
func (k *k8s) containerEnv(t *testing.T, where string, c obj) map[string]string {
	t.Helper()
	environ := make(map[string]string)
	for _, e := range list(c, "env") {
		name := str(e, "name")
		switch {
		case get(e, "valueFrom", "secretKeyRef") != nil:
			ref, key := str(e, "valueFrom", "secretKeyRef", "name"), str(e, "valueFrom", "secretKeyRef", "key")
			v, ok := k.secrets[ref][key]
			if !ok {
				if optional, _ := boolean(e, "valueFrom", "secretKeyRef", "optional"); optional {
					continue // the kubelet leaves it unset
				}
				t.Errorf("%s: env %s: Secret %s has no key %s", where, name, ref, key)
			}
			environ[name] = v
		case get(e, "valueFrom", "configMapKeyRef") != nil:
			ref, key := str(e, "valueFrom", "configMapKeyRef", "name"), str(e, "valueFrom", "configMapKeyRef", "key")
			v, ok := k.configMaps[ref][key]
			if !ok {
				t.Errorf("%s: env %s: ConfigMap %s has no key %s", where, name, ref, key)
			}
			environ[name] = v
		case get(e, "valueFrom") != nil:
			environ[name] = "from-the-downward-api"
		default:
			environ[name] = str(e, "value")
		}
	}
	for _, ef := range list(c, "envFrom") {
		src := k.secrets[str(ef, "secretRef", "name")]
		if cm := str(ef, "configMapRef", "name"); cm != "" {
			src = k.configMaps[cm]
		}
		if src == nil {
			t.Errorf("%s: envFrom %v: no such Secret or ConfigMap", where, ef)
		}
		for key, v := range src {
			environ[str(ef, "prefix")+key] = v
		}
	}
	return environ
}

// mountedFile finds the ConfigMap key a container sees at path.
func mountedFile(t *testing.T, where string, pod, c obj, k *k8s, path string) string {
	t.Helper()
	for _, vm := range list(c, "volumeMounts") {
		mount := str(vm, "mountPath")
		var key string
		switch sub := str(vm, "subPath"); {
		case sub != "" && mount == path:
			key = sub
		case sub == "" && filepath.Dir(path) == filepath.Clean(mount):
			key = filepath.Base(path)
		default:
			continue
		}
		for _, v := range list(pod, "volumes") {
			if str(v, "name") != str(vm, "name") {
				continue
			}
			cm := str(v, "configMap", "name")
			if cm == "" {
				t.Fatalf("%s: %s is mounted from volume %s, which is not a ConfigMap", where, path, str(v, "name"))
			}
			for _, it := range list(v, "configMap", "items") {
				if str(it, "path") == key {
					key = str(it, "key")
				}
			}
			data, ok := k.configMaps[cm][key]
			if !ok {
				t.Fatalf("%s: ConfigMap %s has no key %s (mounted at %s)", where, cm, key, path)
			}
			return data
		}
		t.Fatalf("%s: volumeMount %s names no volume of the pod", where, str(vm, "name"))
	}
	t.Fatalf("%s: nothing is mounted at %s", where, path)
	return ""
}

// resolvePort turns a probe's or Service's port (a number or a port name)
// into the container's port number.
func resolvePort(c obj, port any) int {
	switch p := port.(type) {
	case int:
		return p
	case string:
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
		for _, cp := range list(c, "ports") {
			if str(cp, "name") == p {
				n, _ := strconv.Atoi(str(cp, "containerPort"))
				return n
			}
		}
	}
	return -1
}

// postgresSettings reads the -c name=value pairs of a postgres command line.
func postgresSettings(args []string) map[string]string {
	s := make(map[string]string)
	for i := 0; i < len(args); i++ {
		kv := ""
		switch {
		case args[i] == "-c" && i+1 < len(args):
			i++
			kv = args[i]
		case strings.HasPrefix(args[i], "-c"):
			kv = strings.TrimPrefix(args[i], "-c")
		case strings.HasPrefix(args[i], "--") && strings.Contains(args[i], "="):
			kv = strings.TrimPrefix(args[i], "--")
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			s[strings.ReplaceAll(k, "-", "_")] = v
		}
	}
	return s
}

// checkLogicalReplication checks the settings dzhook needs from PostgreSQL.
func checkLogicalReplication(t *testing.T, where string, s map[string]string) {
	t.Helper()
	if s["wal_level"] != "logical" {
		t.Errorf("%s: wal_level=%q, want logical (settings: %v)", where, s["wal_level"], s)
	}
	for _, name := range []string{"max_replication_slots", "max_wal_senders"} {
		if v, ok := s[name]; ok {
			if n, err := strconv.Atoi(v); err != nil || n < 1 {
				t.Errorf("%s: %s=%s, want at least 1", where, name, v)
			}
		}
	}
}

func TestKubernetes(t *testing.T) {
	k := loadK8s(t)

	// kustomization.yaml lists every manifest, and only existing ones.
	kust := decodeYAMLDocs(t, filepath.Join(env.deploy, "kubernetes", "kustomization.yaml"))
	if len(kust) != 1 {
		t.Fatalf("kustomization.yaml: %d documents", len(kust))
	}
	resources := strs(kust[0], "resources")
	for _, r := range resources {
		if _, ok := k.docs[r]; !ok {
			t.Errorf("kustomization.yaml lists %s, which is not a manifest in deploy/kubernetes", r)
		}
	}
	for f := range k.docs {
		if f != "kustomization.yaml" && !slices.Contains(resources, f) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}

	// Placeholders only: nothing that looks like a real secret in git.
	if len(k.secrets) == 0 {
		t.Fatal("no Secret in deploy/kubernetes")
	}
	for name, vals := range k.secrets {
		for key, v := range vals {
			if !strings.Contains(v, "CHANGE-ME") {
				t.Errorf("Secret %s key %s: %q is not marked as a placeholder (CHANGE-ME)", name, key, v)
			}
		}
	}

	if len(k.sets) != 1 {
		t.Fatalf("%d StatefulSets, want 1 (PostgreSQL with the dzhook sidecar)", len(k.sets))
	}
	set := k.sets[0]
	pod := asMap(get(set, "spec", "template", "spec"))
	pg, dz := container(pod, "postgres"), container(pod, "dzhook")
	if pg == nil || dz == nil {
		t.Fatalf("the StatefulSet's pod needs containers postgres and dzhook")
	}

	// PostgreSQL: logical replication, through the image's entrypoint.
	if get(pg, "command") != nil {
		t.Errorf("postgres container: command replaces the image's entrypoint, which initializes the database; use args")
	}
	checkLogicalReplication(t, "postgres container args", postgresSettings(strs(pg, "args")))

	// dzhook: its image is the one kustomization.yaml sets.
	var images []string
	for _, im := range list(kust[0], "images") {
		images = append(images, str(im, "name"))
	}
	if img := str(dz, "image"); !slices.Contains(images, strings.Split(img, ":")[0]) {
		t.Errorf("dzhook container image %q is not one kustomization.yaml's images set (%v)", img, images)
	}
	checkDzhookPod(t, k, "StatefulSet "+str(set, "metadata", "name"), asMap(get(set, "spec", "template")), "run",
		map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": ""})

	// kubectl, when present, renders the kustomization.
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		out, err := exec.Command(kubectl, "kustomize", filepath.Join(env.deploy, "kubernetes")).CombinedOutput()
		if err != nil {
			t.Errorf("kubectl kustomize deploy/kubernetes: %v\n%s", err, out)
		}
	} else {
		t.Log("kubectl not found: the kustomization is checked by these tests only, not rendered")
	}
}

// checkDzhookPod checks a pod template's dzhook container against the
// dzhook binary and the manifests k holds: its command line (subcommand
// sub), its environment, the config.yaml mounted where --config says,
// which must pass `dzhook validate` with that environment, the probes
// (name → path, "" for either /healthz or /readyz) and a Service on the
// admin port, and the hardening of every container of the pod (init
// containers too).
func checkDzhookPod(t *testing.T, k *k8s, where string, template obj, sub string, probes map[string]string) {
	t.Helper()
	checkDzhookContainer(t, k, where, template, sub, probes)
	checkHardening(t, where, asMap(get(template, "spec")))
}

// checkDzhookContainer is checkDzhookPod without the hardening, for pods
// whose securityContext is not the manifest's to set (an operator's
// sidecar).
func checkDzhookContainer(t *testing.T, k *k8s, where string, template obj, sub string, probes map[string]string) {
	t.Helper()
	pod := asMap(get(template, "spec"))
	podLabels := asMap(get(template, "metadata", "labels"))
	dz := container(pod, "dzhook")
	if dz == nil {
		t.Fatalf("%s: the pod has no container dzhook", where)
	}
	if get(dz, "command") != nil {
		t.Errorf("%s: dzhook container: command overrides the image's ENTRYPOINT; use args", where)
	}
	inv := checkInvocation(t, where+": dzhook container args", strs(dz, "args"))
	if inv.sub != sub {
		t.Errorf("%s: dzhook container runs dzhook %s, want %s", where, inv.sub, sub)
	}
	configPath := inv.flags["config"]
	if configPath == "" {
		t.Fatalf("%s: dzhook container args: no --config", where)
	}
	environ := k.containerEnv(t, where+": dzhook container", dz)
	if v, ok := environ["DZHOOK_CONFIG"]; ok && v != configPath {
		t.Errorf("%s: dzhook container: DZHOOK_CONFIG=%s but --config %s", where, v, configPath)
	}
	configYAML := mountedFile(t, where+": dzhook container", pod, dz, k, configPath)
	checkContainerEnv(t, where+": dzhook container env", environ, configYAML)
	cfg := validate(t, where+": config.yaml with the pod's environment", configYAML, environ)

	// The pod's stop time lets the drain finish: killed mid-drain, the
	// attempts in flight are sent again.
	grace := 30 * time.Second // Kubernetes' default
	if g, ok := get(pod, "terminationGracePeriodSeconds").(int); ok {
		grace = time.Duration(g) * time.Second
	} else if g, ok := get(pod, "terminationGracePeriodSeconds").(float64); ok {
		grace = time.Duration(g) * time.Second
	}
	if grace < drainBudget(cfg) {
		t.Errorf("%s: terminationGracePeriodSeconds %s, want at least %s (delivery.timeout %s + admin shutdown + margin)", where, grace, drainBudget(cfg), cfg.Delivery.Timeout)
	}

	// The probes and the Service reach the admin server of that config.
	host, port := adminPort(t, where+": config.yaml", cfg)
	if isLoopback(host) {
		t.Errorf("%s: config.yaml: admin.listen %s is loopback: the kubelet's probes and the Service cannot reach it", where, cfg.Admin.Listen)
	}
	if !cfg.Admin.Token.IsSet() {
		t.Errorf("%s: config.yaml: admin.token is not set", where)
	}
	for _, probe := range sortedKeys(probes) {
		p := get(dz, probe)
		if p == nil {
			if probes[probe] != "" {
				t.Errorf("%s: dzhook container: no %s", where, probe)
			}
			continue
		}
		path := str(p, "httpGet", "path")
		want := probes[probe]
		if want == "" && path != "/healthz" && path != "/readyz" {
			t.Errorf("%s: dzhook container %s: path %q, want /healthz or /readyz", where, probe, path)
		} else if want != "" && path != want {
			t.Errorf("%s: dzhook container %s: path %q, want %s", where, probe, path, want)
		}
		if got := resolvePort(dz, get(p, "httpGet", "port")); got != port {
			t.Errorf("%s: dzhook container %s: port %v (%d), but admin.listen is %s", where, probe, get(p, "httpGet", "port"), got, cfg.Admin.Listen)
		}
	}
	if a := str(get(template, "metadata", "annotations"), "prometheus.io/port"); a != "" && a != strconv.Itoa(port) {
		t.Errorf("%s: prometheus.io/port annotation %s, but admin.listen is %s", where, a, cfg.Admin.Listen)
	}
	adminService := false
	for _, svc := range k.services {
		if !selects(asMap(get(svc, "spec", "selector")), podLabels) {
			continue
		}
		for _, sp := range list(svc, "spec", "ports") {
			target := get(sp, "targetPort")
			if target == nil {
				target = get(sp, "port")
			}
			if resolvePort(dz, target) == port {
				adminService = true
			}
		}
	}
	if !adminService {
		t.Errorf("%s: no Service selects the pod and targets the admin port %d", where, port)
	}

}

// checkHardening checks every container of a pod: non-root, no privilege
// escalation or capabilities, memory and CPU budgets, and the dzhook
// container's read-only root and the image's user.
func checkHardening(t *testing.T, where string, pod obj) {
	t.Helper()
	dz := container(pod, "dzhook")
	df, err := parseDockerfile(filepath.Join(env.deploy, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	users := df.final().find("USER")
	for _, c := range append(list(pod, "initContainers"), list(pod, "containers")...) {
		name := str(c, "name")
		sc := get(c, "securityContext")
		if v, _ := boolean(sc, "runAsNonRoot"); !v {
			t.Errorf("%s: container %s: securityContext.runAsNonRoot is not true", where, name)
		}
		if v, set := boolean(sc, "allowPrivilegeEscalation"); v || !set {
			t.Errorf("%s: container %s: securityContext.allowPrivilegeEscalation is not false", where, name)
		}
		if !slices.Contains(strs(sc, "capabilities", "drop"), "ALL") {
			t.Errorf("%s: container %s: securityContext.capabilities.drop lacks ALL", where, name)
		}
		for _, kind := range []string{"requests", "limits"} {
			if str(c, "resources", kind, "memory") == "" {
				t.Errorf("%s: container %s: no resources.%s.memory", where, name, kind)
			}
		}
		if str(c, "resources", "requests", "cpu") == "" {
			t.Errorf("%s: container %s: no resources.requests.cpu", where, name)
		}
	}
	if v, _ := boolean(dz, "securityContext", "readOnlyRootFilesystem"); !v {
		t.Errorf("%s: dzhook container: securityContext.readOnlyRootFilesystem is not true", where)
	}
	if str(dz, "resources", "limits", "cpu") == "" {
		t.Errorf("%s: dzhook container: no resources.limits.cpu", where)
	}
	if len(users) > 0 {
		if uid, want := str(dz, "securityContext", "runAsUser"), strings.Split(users[len(users)-1].args, ":")[0]; uid != "" && uid != want {
			t.Errorf("%s: dzhook container runs as uid %s, the image's USER is %s", where, uid, want)
		}
	}

}

// selects reports whether a Service selector matches the labels.
func selects(selector, labels obj) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if fmt.Sprint(labels[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// TestKubernetesFilesAreYAML makes sure no stray file in the directory is
// silently skipped.
func TestKubernetesFilesAreYAML(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join(env.deploy, "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			t.Errorf("deploy/kubernetes/%s: not a .yaml manifest; these tests only read *.yaml", e.Name())
		}
	}
}
