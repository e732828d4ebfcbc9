package transform

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/dzdesk/dzhook/internal/mapping"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenPath is the golden body of a format for an event.
func goldenPath(format, event string) string {
	return filepath.Join("testdata", format, event+".json")
}

// Each preset's body for each catalog event and a custom one, made from
// the event's sample envelope, is byte for byte its golden file:
// testdata/<format>/<event>.json. go test -update rewrites them.
func TestPresetGolden(t *testing.T) {
	for _, p := range presetFormats {
		for _, name := range sampleEvents() {
			got := applyPreset(t, p.format, mapping.Sample(name, "whk_sample", sampleTime))
			path := goldenPath(p.format, name)
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s %s: got\n%s\nwant (%s; go test -update rewrites it, if the change is meant)\n%s", p.format, name, got, path, want)
			}
		}
	}
}

// Every golden file, as committed, is a body its destination takes.
func TestPresetGoldenValid(t *testing.T) {
	for _, p := range presetFormats {
		files, err := filepath.Glob(filepath.Join("testdata", p.format, "*.json"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(files), len(sampleEvents()); got != want {
			t.Errorf("%s: %d golden files, want %d (one per event)", p.format, got, want)
		}
		for _, f := range files {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.validate(body); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
}
