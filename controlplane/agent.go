package controlplane

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The agent API (agentapi): a server's agent, authenticated by its
// server's token, reads its job and reports.

func (s *Server) agentInventory(c *call) (int, any, error) {
	var inv agentapi.Inventory
	if err := decodeStrict(c.body, &inv); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	if err := inv.Validate(); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	for i, m := range inv.MACs {
		inv.MACs[i], _ = agentapi.NormalizeMAC(m)
	}
	b, err := json.Marshal(inv)
	if err != nil {
		return 0, nil, err
	}
	if err := s.st.PutInventory(c.r.Context(), c.server.ID, b, s.cfg.Clock.Now()); err != nil {
		return 0, nil, err
	}
	s.bootSeen(c.r.Context(), c.server, "rescue agent inventory") // issue 24
	return http.StatusNoContent, nil, nil
}

// jobRetryAfter is how long an agent with nothing to do waits (seconds).
const jobRetryAfter = "10"

func (s *Server) agentJob(c *call) (int, any, error) {
	d, sealed, err := s.st.RunningDeployment(c.r.Context(), c.server.ID)
	if errors.Is(err, store.ErrNotFound) {
		c.w.Header().Set("Retry-After", jobRetryAfter)
		return http.StatusNoContent, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	body, err := s.cfg.Keys.Open(sealed, jobAD(c.server.ID))
	if err != nil {
		return 0, nil, err
	}
	booted, err := s.bootedURL(c, d, body)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, agentapi.Assignment{DeploymentID: d.ID, Job: body, Attempts: d.Attempt, EFIBootloaderPath: c.server.EFIBootloaderPath,
		ImagePath: s.imagePathFor(c, d.ID, body), BootedURL: booted}, nil
}

func deploymentID(c *call) (int64, error) {
	id, err := strconv.ParseInt(c.r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, fail(kNotFound, job.APINotFound, "deployment = "+truncate(c.r.PathValue("id"), 20))
	}
	return id, nil
}

// agentErr turns the store's refusals into the agent API's answers.
func agentErr(err error, id int64) error {
	var ex *store.AttemptsExhaustedError
	switch {
	case errors.As(err, &ex):
		return fail(kGone, job.APIAttemptsExhausted, ex.Attempts)
	case errors.Is(err, store.ErrNotFound):
		return fail(kNotFound, job.APINotFound, "deployment = "+strconv.FormatInt(id, 10))
	case errors.Is(err, store.ErrGone):
		return fail(kGone, job.APIDeploymentGone, id)
	}
	return err
}

func (s *Server) agentAttempt(c *call) (int, any, error) {
	id, err := deploymentID(c)
	if err != nil {
		return 0, nil, err
	}
	n, err := s.st.OpenAttempt(c.r.Context(), c.server.ID, id, s.cfg.Clock.Now())
	if err != nil {
		return 0, nil, agentErr(err, id)
	}
	if n > 1 {
		s.log.Warn("agent restarted", "server", c.server.Name, "deployment", id, "attempt", n)
	}
	return http.StatusOK, agentapi.Attempt{Attempt: n}, nil
}

func (s *Server) agentEvents(c *call) (int, any, error) {
	id, err := deploymentID(c)
	if err != nil {
		return 0, nil, err
	}
	var b agentapi.EventBatch
	if err := decodeStrict(c.body, &b); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	if err := b.Validate(); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	ack, err := s.st.AppendEvents(c.r.Context(), store.Append{ServerID: c.server.ID, DeploymentID: id, Attempt: b.Attempt, Events: b.Events, Now: s.cfg.Clock.Now()})
	s.observeBatch(c.server.ID, id, &b, ack.Done, err)
	if err != nil {
		return 0, nil, agentErr(err, id)
	}
	return http.StatusOK, agentapi.Ack{Seq: ack.Seq, Done: ack.Done}, nil
}
