package deploy_test

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The chart deploy/helm/dzhook is rendered by deploy/helm/charttest, a
// module of its own (Helm's dependencies stay out of go.mod), into
// golden files that it keeps true to the chart. These tests validate
// those renders as TestKubernetes validates deploy/kubernetes: against
// the dzhook binary, with `dzhook validate` on the ConfigMap's
// config.yaml and the pod's environment.

// helmRender loads one golden render of the chart.
func helmRender(t *testing.T, name string) *k8s {
	t.Helper()
	k := newK8s()
	file := "helm/charttest/testdata/" + name + ".golden.yaml"
	k.add(t, file, decodeYAMLDocs(t, filepath.Join(env.deploy, filepath.FromSlash(file))))
	return k
}

// kinds returns the documents of k by kind.
func (k *k8s) kinds() map[string][]obj {
	out := make(map[string][]obj)
	files := sortedKeys(k.docs)
	for _, f := range files {
		for _, d := range k.docs[f] {
			out[str(d, "kind")] = append(out[str(d, "kind")], d)
		}
	}
	return out
}

// isPlaceholder reports whether a Secret value in git is marked as one to
// replace (CHANGE-ME), also inside base64 (secrets.key).
func isPlaceholder(v string) bool {
	if strings.Contains(v, "CHANGE-ME") {
		return true
	}
	b, err := base64.StdEncoding.DecodeString(v)
	return err == nil && strings.Contains(string(b), "CHANGE-ME")
}

func TestHelmChart(t *testing.T) {
	appVersion := str(decodeYAMLDocs(t, filepath.Join(env.deploy, "helm", "dzhook", "Chart.yaml"))[0], "appVersion")
	for _, c := range []struct {
		name           string
		replicas       int
		serviceMonitor bool
		setup          bool
	}{
		{name: "default", replicas: 1},
		{name: "servicemonitor", replicas: 1, serviceMonitor: true},
		{name: "replicas", replicas: 3},
		{name: "cloudnativepg", replicas: 2, setup: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := helmRender(t, c.name)
			where := "helm render " + c.name
			byKind := k.kinds()
			for _, kind := range []string{"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} {
				if n := len(byKind[kind]); n != 1 {
					t.Errorf("%s: %d %s, want 1", where, n, kind)
				}
			}
			if got := len(byKind["ServiceMonitor"]) == 1; got != c.serviceMonitor {
				t.Errorf("%s: ServiceMonitor rendered: %v, want %v", where, got, c.serviceMonitor)
			}
			if t.Failed() {
				t.FailNow()
			}
			for name, vals := range k.secrets {
				for key, v := range vals {
					if !isPlaceholder(v) {
						t.Errorf("%s: Secret %s key %s: %q is not marked as a placeholder (CHANGE-ME)", where, name, key, v)
					}
				}
			}

			dep := byKind["Deployment"][0]
			template := asMap(get(dep, "spec", "template"))
			if got := str(dep, "spec", "replicas"); got != itoa(c.replicas) {
				t.Errorf("%s: replicas %s, want %d", where, got, c.replicas)
			}
			// One replica: Ready means streaming, so a new pod cannot be
			// Ready beside the old one: Recreate. More: Ready means running
			// (standbys too), and rolling updates work.
			ready, strategy := "/readyz", "Recreate"
			if c.replicas > 1 {
				ready, strategy = "/healthz", "RollingUpdate"
			}
			if got := str(dep, "spec", "strategy", "type"); got != strategy {
				t.Errorf("%s: strategy %s, want %s with readiness on %s", where, got, strategy, ready)
			}
			if img := str(container(asMap(get(template, "spec")), "dzhook"), "image"); !strings.HasSuffix(img, ":"+appVersion) {
				t.Errorf("%s: image %s, want the chart's appVersion %s as tag", where, img, appVersion)
			}
			if c.setup {
				// dzhook setup needs the owner's DSN, from the operator's
				// Secret, which is not part of the chart.
				k.secrets["dzdesk-db-app"] = map[string]string{"uri": "postgresql://dzdesk:CHANGE-ME@dzdesk-db-rw.dzdesk:5432/dzdesk"}
			}
			checkDzhookPod(t, k, where, template, "run",
				map[string]string{"livenessProbe": "/healthz", "readinessProbe": ready, "startupProbe": "/healthz"})
			checkSetupContainer(t, k, where, template, c.setup)

			pdb := byKind["PodDisruptionBudget"][0]
			if !selects(asMap(get(pdb, "spec", "selector", "matchLabels")), asMap(get(template, "metadata", "labels"))) {
				t.Errorf("%s: the PodDisruptionBudget does not select the pods", where)
			}
			if got := str(pdb, "spec", "unhealthyPodEvictionPolicy"); got != "AlwaysAllow" {
				t.Errorf("%s: PodDisruptionBudget unhealthyPodEvictionPolicy %q, want AlwaysAllow (a standby is never Ready on /readyz)", where, got)
			}
			if got := str(pdb, "spec", "maxUnavailable"); got != "1" {
				t.Errorf("%s: PodDisruptionBudget maxUnavailable %s, want 1 (a PDB with minAvailable 1 on one replica blocks every drain)", where, got)
			}

			for _, sm := range byKind["ServiceMonitor"] {
				checkServiceMonitor(t, where, sm, k.services)
			}
		})
	}
}

// checkSetupContainer checks the init container that runs dzhook setup:
// the owner's DSN as source, the role's as journal, and the same
// configuration as the dzhook container.
func checkSetupContainer(t *testing.T, k *k8s, where string, template obj, want bool) {
	t.Helper()
	pod := asMap(get(template, "spec"))
	var setup obj
	for _, c := range list(pod, "initContainers") {
		if str(c, "name") == "setup" {
			setup = asMap(c)
		}
	}
	if (setup != nil) != want {
		t.Fatalf("%s: init container setup present: %v, want %v", where, setup != nil, want)
	}
	if setup == nil {
		return
	}
	where += ": init container setup"
	inv := checkInvocation(t, where, strs(setup, "args"))
	if inv.sub != "setup" {
		t.Errorf("%s: runs dzhook %s, want setup", where, inv.sub)
	}
	if _, ok := inv.flags["check"]; ok {
		t.Errorf("%s: --check changes nothing; the init container is there to make the publication and the slot", where)
	}
	environ := k.containerEnv(t, where, setup)
	run := k.containerEnv(t, where, container(pod, "dzhook"))
	// The owner makes the publication and the identity; the role, which
	// replicates, the slot and the journal (an owner need not replicate:
	// CloudNativePG's app owner cannot).
	if got, want := environ["DZHOOK_SOURCE_DSN"], run["DZHOOK_SOURCE_DSN"]; got != want {
		t.Errorf("%s: source DSN %q, want the role's %q (it makes the slot, and the journal's tables must stay the role's)", where, got, want)
	}
	ownerVar := inv.flags["owner-dsn-env"]
	if owner := environ[ownerVar]; ownerVar == "" || owner == "" || owner == run["DZHOOK_SOURCE_DSN"] {
		t.Errorf("%s: --owner-dsn-env %q gives %q; want the tables' owner's DSN", where, ownerVar, owner)
	}
	if got, want := fmt.Sprint(get(setup, "envFrom")), fmt.Sprint(get(container(pod, "dzhook"), "envFrom")); got != want {
		t.Errorf("%s: envFrom %s, want the dzhook container's %s (the configuration's ${NAME}s)", where, got, want)
	}
	configYAML := mountedFile(t, where, pod, setup, k, inv.flags["config"])
	forConfig := make(map[string]string, len(environ)) // the owner's is setup's, not the configuration's
	for k, v := range environ {
		if k != ownerVar {
			forConfig[k] = v
		}
	}
	checkContainerEnv(t, where+" env", forConfig, configYAML)
	validate(t, where+": config.yaml with its environment", configYAML, environ)
}

// checkServiceMonitor checks that a ServiceMonitor scrapes /metrics on a
// named port of a Service it selects.
func checkServiceMonitor(t *testing.T, where string, sm obj, services []obj) {
	t.Helper()
	sel := asMap(get(sm, "spec", "selector", "matchLabels"))
	var ports []string
	for _, svc := range services {
		if selects(sel, asMap(get(svc, "metadata", "labels"))) {
			for _, p := range list(svc, "spec", "ports") {
				ports = append(ports, str(p, "name"))
			}
		}
	}
	if len(ports) == 0 {
		t.Errorf("%s: the ServiceMonitor selects no Service", where)
	}
	for _, ep := range list(sm, "spec", "endpoints") {
		if !slices.Contains(ports, str(ep, "port")) {
			t.Errorf("%s: ServiceMonitor endpoint port %q is not a port of the Service (%v)", where, str(ep, "port"), ports)
		}
		if str(ep, "path") != "/metrics" {
			t.Errorf("%s: ServiceMonitor endpoint path %q, want /metrics", where, str(ep, "path"))
		}
		// The alert rules select up{job="dzhook"}: the job label must be
		// that, whatever the Service is called.
		job := ""
		for _, r := range list(ep, "relabelings") {
			if str(r, "targetLabel") == "job" {
				job = str(r, "replacement")
			}
		}
		if job != "dzhook" {
			t.Errorf("%s: ServiceMonitor endpoint sets job %q, want dzhook (the alert rules' job)", where, job)
		}
	}
}

// TestHelmZalandoSidecar checks the Zalando example as the operator would
// run it: the sidecar from the postgresql resource, with the chart's
// ConfigMap mounted through additionalVolumes and the chart's Service in
// front of the operator's pods.
func TestHelmZalandoSidecar(t *testing.T) {
	k := helmRender(t, "zalando-postgres-operator")
	byKind := k.kinds()
	for _, kind := range []string{"Deployment", "PodDisruptionBudget"} {
		if n := len(byKind[kind]); n != 0 {
			t.Errorf("sidecar mode renders %d %s, want none: the operator runs the pods", n, kind)
		}
	}
	const file = "helm/examples/zalando-postgres-operator.yaml"
	docs := decodeYAMLDocs(t, filepath.Join(env.deploy, filepath.FromSlash(file)))
	var pg obj
	for _, d := range docs {
		if str(d, "kind") == "postgresql" && str(d, "apiVersion") == "acid.zalan.do/v1" {
			pg = d
		}
	}
	if pg == nil {
		t.Fatalf("%s: no acid.zalan.do/v1 postgresql resource", file)
	}
	var sidecar obj
	for _, s := range list(pg, "spec", "sidecars") {
		if str(s, "name") == "dzhook" {
			sidecar = asMap(s)
		}
	}
	if sidecar == nil {
		t.Fatalf("%s: no sidecar named dzhook", file)
	}
	// The operator's Sidecar type has these fields only; it drops others
	// (probes, securityContext, volumeMounts: additionalVolumes mount).
	for key := range sidecar {
		if !slices.Contains([]string{"name", "image", "ports", "env", "resources"}, key) {
			t.Errorf("%s: sidecar dzhook: %s is not a field of the operator's sidecars (name, image, ports, env, resources)", file, key)
		}
	}
	// The pod as the operator makes it: its labels, the sidecar, and the
	// additional volumes that target it.
	labels := obj{"application": "spilo", "cluster-name": str(pg, "metadata", "name"), "spilo-role": "master"}
	ctr := make(obj)
	for key, v := range sidecar {
		ctr[key] = v
	}
	var volumes, mounts []any
	for _, v := range list(pg, "spec", "additionalVolumes") {
		if !slices.Contains(strs(v, "targetContainers"), "dzhook") && !slices.Contains(strs(v, "targetContainers"), "all") {
			continue
		}
		volumes = append(volumes, obj{"name": str(v, "name"), "configMap": get(v, "volumeSource", "configMap")})
		mounts = append(mounts, obj{"name": str(v, "name"), "mountPath": str(v, "mountPath")})
	}
	ctr["volumeMounts"] = mounts
	if get(ctr, "args") == nil {
		// The operator's sidecars take no args or command: the image's CMD
		// runs.
		df, err := parseDockerfile(filepath.Join(env.deploy, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		cmds := df.final().find("CMD")
		if len(cmds) != 1 {
			t.Fatalf("Dockerfile: %d CMD in the final stage, want 1", len(cmds))
		}
		var args []any
		for _, a := range execForm(t, cmds[0]) {
			args = append(args, a)
		}
		ctr["args"] = args
	}
	template := obj{
		"metadata": obj{"labels": labels},
		"spec":     obj{"containers": []any{ctr}, "volumes": volumes},
	}
	// The operator's Secret of the dzhook user, which is not the chart's.
	user := "dzhook." + str(pg, "metadata", "name") + ".credentials.postgresql.acid.zalan.do"
	k.secrets[user] = map[string]string{"username": "dzhook", "password": "CHANGE-ME"}
	if !slices.Contains(strs(pg, "spec", "users", "dzhook"), "replication") {
		t.Errorf("%s: the user dzhook lacks the replication flag", file)
	}
	// No probes: the operator's sidecars have none.
	checkDzhookContainer(t, k, file, template, "run", nil)
	checkLogicalReplication(t, file+": spec.postgresql.parameters", stringMap(get(pg, "spec", "postgresql", "parameters")))
}

// TestHelmCloudNativePG checks the CloudNativePG example: logical
// replication on, the replication role, and the chart's values pointing
// at the cluster's read-write Service.
func TestHelmCloudNativePG(t *testing.T) {
	const file = "helm/examples/cloudnativepg.yaml"
	var cluster obj
	for _, d := range decodeYAMLDocs(t, filepath.Join(env.deploy, filepath.FromSlash(file))) {
		switch str(d, "kind") {
		case "Cluster":
			cluster = d
		case "Secret":
			for key, v := range asMap(get(d, "stringData")) {
				if key == "password" && !isPlaceholder(str(v)) {
					t.Errorf("%s: Secret %s: the password is not a CHANGE-ME placeholder", file, str(d, "metadata", "name"))
				}
			}
		}
	}
	if cluster == nil || str(cluster, "apiVersion") != "postgresql.cnpg.io/v1" {
		t.Fatalf("%s: no postgresql.cnpg.io/v1 Cluster", file)
	}
	checkLogicalReplication(t, file+": spec.postgresql.parameters", stringMap(get(cluster, "spec", "postgresql", "parameters")))
	role := false
	for _, r := range list(cluster, "spec", "managed", "roles") {
		if str(r, "name") == "dzhook" && str(r, "replication") == "true" && str(r, "login") == "true" {
			role = true
		}
	}
	if !role {
		t.Errorf("%s: no managed role dzhook with login and replication", file)
	}
	// The render of cloudnativepg-values.yaml (TestHelmChart validates it)
	// goes to <cluster>-rw, and its setup reads the owner's <cluster>-app.
	k := helmRender(t, "cloudnativepg")
	rw := "@" + str(cluster, "metadata", "name") + "-rw:"
	for name, vals := range k.secrets {
		if dsn, ok := vals["source-dsn"]; ok && !strings.Contains(dsn, rw) {
			t.Errorf("cloudnativepg values: Secret %s source-dsn %q is not on the read-write Service (%s)", name, dsn, rw)
		}
	}
	values := readFile(t, filepath.Join(env.deploy, "helm", "examples", "cloudnativepg-values.yaml"))
	if !strings.Contains(values, "secretName: "+str(cluster, "metadata", "name")+"-app") {
		t.Errorf("cloudnativepg values: setup does not read the owner's DSN from the Secret %s-app", str(cluster, "metadata", "name"))
	}
}

func stringMap(v any) map[string]string {
	out := make(map[string]string)
	for key := range asMap(v) {
		out[key] = str(v, key)
	}
	return out
}

func itoa(n int) string { return str(obj{"n": n}, "n") }
