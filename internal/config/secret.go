package config

import (
	"encoding/json"
	"log/slog"
)

// Secret holds a value that must never reach a log line, an error, the
// admin API or the history: a webhook secret, a token, a DSN with its
// password. Every way of printing it says REDACTED; Reveal returns the value
// to the one place that needs it (signing, dialling, comparing).
type Secret string

// redacted is what every printed form of a Secret shows.
const redacted = "REDACTED"

// Reveal returns the secret's value. Call it only where the value is used,
// never to print it.
func (s Secret) Reveal() string { return string(s) }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s != "" }

// String implements fmt.Stringer (%v, %s).
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer (%#v), which would otherwise print the
// underlying string.
func (s Secret) GoString() string { return `config.Secret("` + s.String() + `")` }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler so a Secret inside an API answer or
// a debug dump is redacted too.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler (YAML, text encoders).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
