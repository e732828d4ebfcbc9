// Package charttest renders dzhook's Helm chart (deploy/helm/dzhook) with
// Helm's own engine, as `helm template` would, and holds the renders under
// testdata/ true.
//
// It is a module of its own so that Helm and the Kubernetes libraries it
// brings stay out of dzhook's go.mod: the main module's tests
// (deploy/helm_test.go) validate the committed renders the way they
// validate deploy/kubernetes (every flag, variable, port and probe path
// against the dzhook binary, `dzhook validate` on the ConfigMap's
// config.yaml with the pod's environment), and TestGolden here fails when
// a render is out of date with the chart. Refresh them with
//
//	cd deploy/helm/charttest && go test -run TestGolden -update
package charttest
