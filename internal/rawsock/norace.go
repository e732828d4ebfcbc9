//go:build !race

package rawsock

// enabled: see race.go.
const enabled = true
