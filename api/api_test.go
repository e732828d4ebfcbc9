package api_test

import (
	"testing"

	"github.com/dzdesk/dzhook/api/apitest"
)

// TestDescriptionIsValid: openapi.yaml is a valid OpenAPI 3.1 document,
// its examples valid against their schemas.
func TestDescriptionIsValid(t *testing.T) {
	doc, err := apitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := doc.OpenAPI, "3.1.0"; got != want {
		t.Errorf("openapi: got %q, want %q", got, want)
	}
}
