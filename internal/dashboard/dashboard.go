// Package dashboard embeds the admin dashboard: static files that talk to
// the admin API, served at / by the admin server. It works offline: no
// CDN, no external fonts.
package dashboard

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Files returns the dashboard's files.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	return sub
}
