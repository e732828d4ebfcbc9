// Package api is the OpenAPI 3.1 description of dzhook's admin API,
// openapi.yaml, built into the binary so the server can serve it
// (GET /v1/openapi.yaml and /v1/openapi.json) and tests can hold the
// server to it (package apitest). The Go types of the bodies it describes
// are those of internal/api; this package holds the description only.
package api

import (
	_ "embed"
	"encoding/json"
	"fmt"

	"go.yaml.in/yaml/v3"
)

//go:embed openapi.yaml
var openapi string

// YAML returns openapi.yaml, the OpenAPI 3.1 description of the admin API.
func YAML() []byte { return []byte(openapi) }

// JSON returns the description as JSON, for the tools that read only
// JSON. Its keys are sorted; YAML's merge keys are resolved.
func JSON() ([]byte, error) {
	var v any
	if err := yaml.Unmarshal([]byte(openapi), &v); err != nil {
		return nil, fmt.Errorf("decode openapi.yaml: %w", err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode openapi.yaml as JSON: %w", err)
	}
	return out, nil
}
