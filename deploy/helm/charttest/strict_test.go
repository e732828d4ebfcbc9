package charttest

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// TestManifestsDecodeStrictly decodes every rendered object into its
// Kubernetes API type with unknown fields refused, as the API server's
// strict field validation does: a misspelt or misplaced field fails here
// rather than being dropped silently at apply time. (The ServiceMonitor
// has no type in these modules; deploy/helm_test.go checks its fields.)
func TestManifestsDecodeStrictly(t *testing.T) {
	types := map[string]func() any{
		"Deployment":          func() any { return new(appsv1.Deployment) },
		"Service":             func() any { return new(corev1.Service) },
		"ConfigMap":           func() any { return new(corev1.ConfigMap) },
		"Secret":              func() any { return new(corev1.Secret) },
		"PodDisruptionBudget": func() any { return new(policyv1.PodDisruptionBudget) },
	}
	for _, c := range goldenCases {
		r, err := render(t, c.values...)
		if err != nil {
			t.Fatal(err)
		}
		decoded := 0
		for _, doc := range strings.Split(r.manifest, "\n---\n") {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Errorf("%s: %v\n%s", c.name, err, doc)
				continue
			}
			if head.Kind == "" {
				continue // comments only
			}
			newObj, ok := types[head.Kind]
			if !ok {
				if head.Kind != "ServiceMonitor" {
					t.Errorf("%s: %s %s has no type to check it against", c.name, head.APIVersion, head.Kind)
				}
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), newObj()); err != nil {
				t.Errorf("%s: %s: %v", c.name, head.Kind, err)
			}
			decoded++
		}
		if decoded == 0 {
			t.Errorf("%s: no object decoded", c.name)
		}
	}
}
