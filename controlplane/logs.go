package controlplane

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/internal/logtail"
	"github.com/byoi/byoi/job"
)

// Log tails of failed deployments (issue 25): the agent posts the end of
// the kernel log and of its own log, redacted (it knows the job's
// secrets); byoi-api redacts again with the built-in patterns (tokens on
// a kernel command line, Authorization headers) and keeps the latest per
// deployment; GET .../bringYourOwnImage/logs shows them.

func (s *Server) logRoutes() {
	s.handle(agentapi.Prefix+"/servers/{server}/deployments/{id}/logs", map[string]endpoint{"POST": {auth: authAgent, maxBody: agentapi.MaxLogsBody, h: s.agentLogs}})
	for _, p := range prefixes {
		s.handle(p+"/dedicated/server/{serviceName}/bringYourOwnImage/logs", map[string]endpoint{"GET": {auth: authCustomer, h: s.deploymentLogs}})
	}
}

func (s *Server) agentLogs(c *call) (int, any, error) {
	id, err := deploymentID(c)
	if err != nil {
		return 0, nil, err
	}
	var l agentapi.LogTails
	if err := decodeStrict(c.body, &l); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	if err := l.Validate(); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	red := logtail.NewRedactor()
	kernel, _ := red.Redact(l.Kernel)
	agent, _ := red.Redact(l.Agent)
	err = s.st.PutDeploymentLogs(c.r.Context(), c.server.ID, store.DeploymentLogs{DeploymentID: id, Attempt: l.Attempt, Kernel: kernel, Agent: agent, ReceivedAt: s.cfg.Clock.Now()})
	if err != nil {
		return 0, nil, agentErr(err, id)
	}
	return http.StatusNoContent, nil, nil
}

// logsView is GET .../bringYourOwnImage/logs.
type logsView struct {
	DeploymentID int64   `json:"deploymentId"`
	Attempt      int     `json:"attempt"`
	Kernel       string  `json:"kernel"`
	Agent        string  `json:"agent"`
	ReceivedAt   *string `json:"receivedAt"`
}

func (s *Server) deploymentLogs(c *call) (int, any, error) {
	var d store.Deployment
	var err error
	if v := c.r.URL.Query().Get("deploymentId"); v != "" {
		id, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			return 0, nil, fail(kBadRequest, job.APIBadParam, "deploymentId", "a deployment id")
		}
		d, err = s.st.Deployment(c.r.Context(), c.server.ID, id)
		if errors.Is(err, store.ErrNotFound) {
			return 0, nil, fail(kNotFound, job.APINotFound, "deploymentId = "+strconv.FormatInt(id, 10))
		}
	} else {
		d, err = s.current(c)
	}
	if err != nil {
		return 0, nil, err
	}
	l, err := s.st.DeploymentLogs(c.r.Context(), d.ID)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil, fail(kNotFound, job.APINotFound, "logs of deployment "+strconv.FormatInt(d.ID, 10))
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, logsView{DeploymentID: l.DeploymentID, Attempt: l.Attempt, Kernel: l.Kernel, Agent: l.Agent, ReceivedAt: rfc3339(l.ReceivedAt)}, nil
}
