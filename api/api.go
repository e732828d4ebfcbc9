// Package api is the OpenAPI 3.1 description of dzhook's admin API,
// openapi.yaml, built into the binary so the server can serve it
// (GET /v1/openapi.yaml) and tests can hold the server to it (package
// apitest). The Go types of the bodies it describes are those of
// internal/api; this package holds the description only.
package api

import _ "embed"

//go:embed openapi.yaml
var openapi string

// YAML returns openapi.yaml, the OpenAPI 3.1 description of the admin API.
func YAML() []byte { return []byte(openapi) }
