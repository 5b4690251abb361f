package harness

import (
	"context"
	"time"
)

// Step is one named step of a check's flow.
type Step struct {
	Name string
	Run  func(context.Context) error
}

// RunSteps runs steps in order, each timed on the case's report, and stops
// at the first that fails; onFail records why (the report's details). It
// returns whether every step passed.
func RunSteps(ctx context.Context, c *Case, steps []Step, onFail func(step string, err error)) bool {
	for _, s := range steps {
		t := time.Now()
		c.log.Info("[%s] step %s", c.Name, s.Name)
		if err := s.Run(ctx); err != nil {
			c.Fail("step "+s.Name, "%v", err)
			if onFail != nil {
				onFail(s.Name, err)
			}
			return false
		}
		c.Time("step "+s.Name, time.Since(t))
	}
	return true
}
