package controlplane

import (
	"context"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/metrics"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The metrics' hooks in the API (issue 28; package metrics): the agent's
// batches as they are stored, and a deployment's duration and steps when
// its agent's final event ended it.

// observeBatch records an agent's batch (nothing without metrics).
func (s *Server) observeBatch(serverID, deployment int64, b *agentapi.EventBatch, done bool, err error) {
	m := s.cfg.Metrics
	if m == nil {
		return
	}
	m.EventBatch(b.Events, err)
	if err == nil && done && len(b.Events) > 0 && b.Events[len(b.Events)-1].Final() && m.FirstEnd(deployment) {
		// Off the request: the agent waits for this answer to reboot.
		go s.observeEnd(serverID, deployment)
	}
}

// observeEnd reads an ended deployment's record, job and history.
func (s *Server) observeEnd(serverID, deployment int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := s.st.Deployment(ctx, serverID, deployment)
	if err != nil || !d.Ended() {
		return
	}
	imageType := "unknown"
	if sealed, err := s.st.DeploymentJob(ctx, serverID, deployment); err == nil {
		if body, err := s.cfg.Keys.Open(sealed, jobAD(serverID)); err == nil {
			if j, err := job.Parse(body); err == nil {
				imageType = j.ImageType
			}
		}
	}
	entries, err := s.st.History(ctx, deployment, 0, 10000)
	if err != nil {
		return
	}
	s.cfg.Metrics.DeploymentEnded(imageType, store.TaskStatusFor(d.Status, d.Code), d.EndedAt.Sub(d.CreatedAt), metrics.StepDurations(entries, d.Attempt))
}
