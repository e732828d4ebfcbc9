package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/dzdesk/dzhook/api"
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

// TestJSON: the JSON form is the same document: it loads and validates
// as OpenAPI 3.1 and has every operation of the YAML one.
func TestJSON(t *testing.T) {
	raw, err := api.JSON()
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := fromJSON.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	fromYAML, err := apitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(fromJSON)
	b, _ := json.Marshal(fromYAML)
	if !bytes.Equal(a, b) {
		t.Errorf("the JSON form differs from openapi.yaml:\n%s\nwant\n%s", a, b)
	}
}

// TestCreatedSubscription: the create answer's schema is Subscription's
// and the secret (written out in openapi.yaml, so they could drift).
func TestCreatedSubscription(t *testing.T) {
	doc, err := apitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	sub := doc.Components.Schemas["Subscription"].Value
	created := doc.Components.Schemas["CreatedSubscription"].Value
	want, _ := json.Marshal(sub.Properties)
	props := maps.Clone(created.Properties)
	delete(props, "secret")
	got, _ := json.Marshal(props)
	if !bytes.Equal(got, want) {
		t.Errorf("CreatedSubscription's properties but secret:\n%s\nwant Subscription's:\n%s", got, want)
	}
	if got, want := created.Required, append(slices.Clone(sub.Required), "secret"); !slices.Equal(got, want) {
		t.Errorf("CreatedSubscription's required: got %v, want %v", got, want)
	}
}
