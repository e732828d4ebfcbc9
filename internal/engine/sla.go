package engine

import (
	"context"
	"time"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/slaclock"
)

// armSLA handles a change of the SLA table.
func (e *Engine) armSLA(ctx context.Context, c *cdc.Change) error {
	up, err := e.mapper.SLAChange(c, e.cfg.SLA.WarningPercent, time.Now())
	if err != nil {
		e.log.Warn("SLA change not understood; its timers are left as they were", "err", err, "lsn", c.CommitLSN.String())
		return nil
	}
	if up.SLAID == "" {
		return nil
	}
	return e.dispatcher.ArmTimers(ctx, slaclock.TimerChange(up))
}
