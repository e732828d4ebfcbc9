//go:build race

package rawsock

// enabled is false under the race detector: syscall.Read and Write tell
// it that a socket's write happens before the read of what it wrote,
// and raw calls would not, so tests that hand data through a socket
// would see races that are not there.
const enabled = false
