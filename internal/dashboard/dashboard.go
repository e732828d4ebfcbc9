// Package dashboard embeds the admin dashboard: static files that talk to
// the admin API, served at / by the admin server. It works offline: no
// CDN, no external fonts.
//
// static/index.html, app.css and app.js are plain files, with no build
// step, that fit the admin server's content security policy (no inline
// script or style). app.js asks for the admin token once per browser
// session (sessionStorage), polls the API every 3 s, and never renders
// what the API returns as HTML: response bodies come from third parties.
// Runtime subscriptions are added, edited, rotated and deleted in modal
// dialogs; a secret the API returns once is shown in the dialog that got
// it and removed from the page when it closes (never in the URL or
// storage). config.yaml subscriptions are shown read-only. Every
// subscription's card has Replay…, a dialog that starts a replay and
// follows its progress every 2 s while it is open.
//
// browser_test.go drives the page in Debian's headless chromium through
// the npm package playwright-core (browsertest/); without node, chromium
// or node_modules it is skipped, or fails under CI=true.
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
