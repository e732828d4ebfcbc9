// Package sql embeds the SQL files of deploy/sql so tests, the demo and the
// benchmark apply exactly the files operators read.
package sql

import _ "embed"

// Schema is dzdesk-schema.sql, the reference DZDESK schema.
//
//go:embed dzdesk-schema.sql
var Schema string
