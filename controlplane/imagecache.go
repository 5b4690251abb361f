package controlplane

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The image cache's route (issue 28): GET agentapi.ImagePath, the agent's
// deployment image from the instance's cache (package imagecache), with
// the agent token. Not through serve: the answer is the image's bytes, for
// minutes, and a GET has no body to read.

func (s *Server) imageRoutes() {
	s.mux.HandleFunc("GET "+agentapi.Prefix+"/servers/{server}/deployments/{id}/image", s.agentImage)
}

// imagePathFor is an assignment's ImagePath: set when this instance has a
// cache and the job has a checksum the cache can verify.
func (s *Server) imagePathFor(c *call, deployment int64, body []byte) string {
	if s.cfg.ImageCache == nil {
		return ""
	}
	j, err := job.Parse(body)
	if err != nil || !imagecache.Cacheable(imagecache.Image{URL: j.ImageURL, ChecksumType: j.ChecksumType, Checksum: j.Checksum}) {
		return ""
	}
	return agentapi.ImagePath(c.server.Name, deployment)
}

func (s *Server) agentImage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{w: w, r: r, qid: w.Header().Get("X-Ovh-QueryID")}
	status, err := s.serveImage(c)
	var busy *imagecache.BusyError
	switch {
	case err == nil:
	case errors.As(err, &busy):
		secs := max(1, int(busy.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		status = http.StatusServiceUnavailable
		writeJSON(w, status, errorBody{Class: "Server::ServiceUnavailable", Message: job.Text(job.CacheBusy, secs)})
	default:
		var body errorBody
		var ours bool
		status, body, ours = describe(err)
		if ours {
			s.log.Error("request failed", "qid", c.qid, "method", r.Method, "route", r.Pattern, "err", err)
		}
		writeJSON(w, status, body)
	}
	s.log.Info("request", "qid", c.qid, "method", r.Method, "path", r.URL.Path, "status", status, "who", c.who, "ms", time.Since(start).Milliseconds())
}

// serveImage authenticates the agent, finds its running deployment's job
// and has the cache answer. The status is for the log (the cache wrote it).
func (s *Server) serveImage(c *call) (int, error) {
	if err := s.authAgent(c, endpoint{}); err != nil { // an image read records the agent alive
		return 0, err
	}
	id, err := deploymentID(c)
	if err != nil {
		return 0, err
	}
	if s.cfg.ImageCache == nil {
		return 0, fail(kNotFound, job.CacheNotServed)
	}
	d, sealed, err := s.st.RunningDeployment(c.r.Context(), c.server.ID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && d.ID != id) {
		return 0, fail(kGone, job.APIDeploymentGone, id)
	}
	if err != nil {
		return 0, err
	}
	body, err := s.cfg.Keys.Open(sealed, jobAD(c.server.ID))
	if err != nil {
		return 0, err
	}
	j, err := job.Parse(body)
	if err != nil {
		return 0, fail(kNotFound, job.CacheNotServed)
	}
	img := imagecache.Image{Customer: c.server.CustomerID, URL: j.ImageURL, Headers: j.Headers, ChecksumType: j.ChecksumType, Checksum: j.Checksum}
	if err := s.cfg.ImageCache.Serve(c.w, c.r, img); err != nil {
		if errors.Is(err, imagecache.ErrNotCached) {
			return 0, fail(kNotFound, job.CacheNotServed)
		}
		return 0, err
	}
	return http.StatusOK, nil
}
