package controlplane

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Headers of OVH's signature scheme (go-ovh's NewRequest).
const (
	hdrApplication = "X-Ovh-Application"
	hdrConsumer    = "X-Ovh-Consumer"
	hdrTimestamp   = "X-Ovh-Timestamp"
	hdrSignature   = "X-Ovh-Signature"
)

// Sign is OVH's request signature, as go-ovh computes it:
// "$1$" + hex(sha1(secret+"+"+consumerKey+"+"+METHOD+"+"+fullURL+"+"+body+"+"+timestamp)).
func Sign(secret, consumerKey, method, fullURL string, body []byte, timestamp int64) string {
	h := sha1.New()
	h.Write([]byte(secret + "+" + consumerKey + "+" + method + "+" + fullURL + "+"))
	h.Write(body)
	h.Write([]byte("+" + strconv.FormatInt(timestamp, 10)))
	return "$1$" + hex.EncodeToString(h.Sum(nil))
}

// SignedURL is the URL a client signed for a request it sent to requestURI
// on host: publicURL (scheme, host and path prefix the client uses) when
// set, the request's own scheme and host otherwise, then the request URI
// exactly as received (path and query, encoded as the client sent them).
// An absolute-form request URI is taken as it is.
func SignedURL(publicURL string, tls bool, host, requestURI string) string {
	if strings.HasPrefix(requestURI, "http://") || strings.HasPrefix(requestURI, "https://") {
		return requestURI
	}
	if publicURL != "" {
		return publicURL + requestURI
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return scheme + "://" + host + requestURI
}

// authCustomer authenticates a customer request: a bearer access token, or
// OVH's application key, consumer key and signature.
func (s *Server) authCustomer(c *call) error {
	if cu, ok := panelCustomer(c.r); ok { // the Control Panel's session
		c.customer, c.who = cu, cu.Name+" (panel)"
		return nil
	}
	h := c.r.Header
	if auth := h.Get("Authorization"); auth != "" {
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || tok == "" {
			return fail(kBadToken, job.APIBadToken)
		}
		cu, err := s.st.CustomerByAccessToken(c.r.Context(), hashToken(tok))
		if errors.Is(err, store.ErrNotFound) {
			return fail(kBadToken, job.APIBadToken)
		}
		if err != nil {
			return err
		}
		c.customer, c.who = cu, cu.Name
		return nil
	}
	appKey, consumer := h.Get(hdrApplication), h.Get(hdrConsumer)
	if appKey == "" && consumer == "" {
		return fail(kNotAuthed, job.APINotAuthed)
	}
	if appKey == "" {
		return fail(kInvalidKey, job.APIInvalidKey)
	}
	if consumer == "" {
		return fail(kNotAuthed, job.APINotAuthed)
	}
	ts, err := strconv.ParseInt(h.Get(hdrTimestamp), 10, 64)
	if err != nil {
		return fail(kOutOfTime, job.APIOutOfTime)
	}
	now := s.cfg.Clock.Now()
	if d := now.Sub(time.Unix(ts, 0)); d > s.cfg.TimeWindow || d < -s.cfg.TimeWindow {
		return fail(kOutOfTime, job.APIOutOfTime)
	}
	if len(appKey) > 64 || len(consumer) > 128 {
		return fail(kInvalidKey, job.APIInvalidKey)
	}
	cred, err := s.st.CredentialByAppKey(c.r.Context(), appKey)
	if errors.Is(err, store.ErrNotFound) {
		return fail(kInvalidKey, job.APIInvalidKey)
	}
	if err != nil {
		return err
	}
	if !equal(hashToken(consumer), cred.ConsumerKeyHash) {
		return fail(kInvalidCredential, job.APIInvalidCred)
	}
	secret, err := s.cfg.Keys.Open(cred.SealedSecret, credentialAD(cred.AppKey))
	if err != nil {
		return err // a wrong key file: ours, logged
	}
	urls := SignedURLs(s.cfg.PublicURL, c.r.TLS != nil, c.r.Host, c.r.RequestURI) // with or without the port: signurl.go
	if !signatureMatches(string(secret), consumer, c.r.Method, urls, c.body, ts, h.Get(hdrSignature)) {
		return fail(kInvalidSignature, job.APIInvalidSig)
	}
	cu, err := s.st.Customer(c.r.Context(), cred.CustomerID)
	if err != nil {
		return err
	}
	c.customer, c.who = cu, cu.Name
	return nil
}

// maxServerName bounds a server name (a DNS name).
const maxServerName = 253

// ownServer resolves the path's server; one that does not exist and one of
// another customer look the same (404), so names cannot be probed.
func (s *Server) ownServer(c *call, name string) error {
	sv, err := s.customerServer(c.r.Context(), c.customer, name)
	if err != nil {
		return err
	}
	c.server = sv
	return nil
}

// customerServer is the server called name when customer cu owns it.
func (s *Server) customerServer(ctx context.Context, cu store.Customer, name string) (store.Server, error) {
	notFound := fail(kNotFound, job.APINotFound, "serviceName = "+truncate(name, 64))
	if len(name) > maxServerName {
		return store.Server{}, notFound
	}
	sv, err := s.st.ServerByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) || err == nil && sv.CustomerID != cu.ID {
		return store.Server{}, notFound
	}
	return sv, err
}

// authAgent authenticates an agent by its server's token; the token opens
// only its own server's paths.
func (s *Server) authAgent(c *call) error {
	tok, ok := strings.CutPrefix(c.r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return fail(kNotAuthed, job.APINotAuthed)
	}
	sv, err := s.st.ServerByAgentToken(c.r.Context(), hashToken(tok))
	if errors.Is(err, store.ErrNotFound) {
		return fail(kBadToken, job.APIBadToken)
	}
	if err != nil {
		return err
	}
	name := c.r.PathValue("server")
	if !equal([]byte(sv.Name), []byte(name)) {
		return fail(kForbidden, job.APIAgentNotAllowed, truncate(name, 64))
	}
	c.server, c.who = sv, "agent "+sv.Name
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
