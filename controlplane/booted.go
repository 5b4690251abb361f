package controlplane

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The loop closes (issue 25): after done, the deployment is watched until
// the new system shows a sign of life. When a job writes a ConfigDrive,
// its assignment carries a bootedURL with a single-use token (stored
// hashed) that the agent puts in the ConfigDrive's vendor_data.json:
// cloud-init's phone_home POSTs it once, on the agent listener, and the
// deployment's history says "booted" with the time from done. One that
// stays silent BootedTimeout after done gets a warning; OVH's status
// fields keep their values (done stays done). A job without a ConfigDrive
// is not watched.

// Booted watch states (historyItem.Booted).
const (
	bootWatching   = "watching"
	bootBooted     = "booted"
	bootSilent     = "noSignOfLife"
	bootNotWatched = "notWatched"
)

func (s *Server) bootedRoutes() {
	s.handle(agentapi.BootedPrefix+"{token}", map[string]endpoint{"POST": {auth: authNone, h: s.booted}})
}

// bootedURL mints the phone-home token of deployment d when its job
// writes a ConfigDrive, and returns the URL; "" when it is not watched.
func (s *Server) bootedURL(c *call, d store.Deployment, body []byte) (string, error) {
	var j *job.Job
	var err error
	if d.Shape == job.ShapeLegacy {
		j, err = job.ParseLegacy(body)
	} else {
		j, err = job.ParseReinstall(body)
	}
	if err != nil || j.ConfigDrive == nil {
		return "", nil // the agent refuses a bad job itself
	}
	tok := randomToken("byoi_bt_")
	if err := s.st.WatchBoot(c.r.Context(), d.ID, hashToken(tok), s.cfg.Clock.Now()); err != nil {
		return "", err
	}
	return s.agentBase(c) + agentapi.BootedPath(tok), nil
}

// agentBase is the URL the deployed system reaches the agent API at: the
// network boot's agent URL, else the one the agent used.
func (s *Server) agentBase(c *call) string {
	if nb := s.cfg.Netboot; nb != nil {
		if nb.AgentURL != "" {
			return strings.TrimSuffix(nb.AgentURL, "/")
		}
		return strings.TrimSuffix(nb.BootURL, "/")
	}
	scheme := "http"
	if c.r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + c.r.Host
}

// booted is the new system's phone home: 204 once, 404 for anything else
// (an unknown or used token, a deployment not done), all alike.
func (s *Server) booted(c *call) (int, any, error) {
	tok := c.r.PathValue("token")
	c.who = "booted"
	if !strings.HasPrefix(tok, "byoi_bt_") || len(tok) > 80 {
		return 0, nil, fail(kNotFound, job.APINotFound, "path")
	}
	w, err := s.st.MarkBooted(c.r.Context(), hashToken(tok), s.cfg.Clock.Now())
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrGone) {
		return 0, nil, fail(kNotFound, job.APINotFound, "path")
	}
	if err != nil {
		return 0, nil, err
	}
	s.log.Info("deployed system booted", "deployment", w.DeploymentID, "after_done", w.BootedAt.Sub(w.DoneAt).Round(time.Second).String())
	return http.StatusNoContent, nil, nil
}

// bootState is a deployment's watch state for the history.
func (s *Server) bootState(ctx context.Context, d store.Deployment) (*string, *string) {
	if d.Status != store.StatusDone {
		return nil, nil
	}
	w, err := s.st.BootWatch(ctx, d.ID)
	st := bootNotWatched
	switch {
	case err != nil:
	case !w.BootedAt.IsZero():
		st = bootBooted
		return &st, rfc3339(w.BootedAt)
	case !w.WarnedAt.IsZero():
		st = bootSilent
	default:
		st = bootWatching
	}
	return &st, nil
}

// redactPath hides the phone-home token in the request log.
func redactPath(p string) string {
	if strings.HasPrefix(p, agentapi.BootedPrefix) {
		return agentapi.BootedPrefix + "[redacted]"
	}
	return p
}
