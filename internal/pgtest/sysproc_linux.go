package pgtest

import "syscall"

// sysProcAttr runs a PostgreSQL binary as cred (nil: as ourselves), in its
// own process group, and kills it when the test binary dies, so a timed-out
// test run leaves no server behind.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
