package controlplane

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"net/http"
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
	h := signHash(secret, consumerKey, method, fullURL)
	h.Write(body)
	return signSum(h, timestamp)
}

// signHash is a signature's hash before the body: the server streams the
// body into it as it arrives.
func signHash(secret, consumerKey, method, fullURL string) hash.Hash {
	h := sha1.New()
	h.Write([]byte(secret + "+" + consumerKey + "+" + method + "+" + fullURL + "+"))
	return h
}

// signSum ends a signature's hash after the body.
func signSum(h hash.Hash, timestamp int64) string {
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

// authCustomer authenticates a customer request with what needs no body:
// the panel's session, a bearer access token, or OVH's application key,
// consumer key and timestamp. For a signature it returns the check to
// finish once the body (streamed into it) has arrived.
func (s *Server) authCustomer(c *call) (*sigCheck, error) {
	if cu, ok := panelCustomer(c.r); ok { // the Control Panel's session
		c.customer, c.who = cu, cu.Name+" (panel)"
		return nil, nil
	}
	h := c.r.Header
	now := s.cfg.Clock.Now()
	if auth := h.Get("Authorization"); auth != "" {
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || tok == "" || len(tok) > maxTokenLen {
			return nil, fail(kBadToken, job.APIBadToken)
		}
		cu, _, err := s.accessToken(c.r.Context(), tok)
		if err != nil {
			return nil, err
		}
		c.customer, c.who = cu, cu.Name
		return nil, nil
	}
	appKey, consumer := h.Get(hdrApplication), h.Get(hdrConsumer)
	if appKey == "" && consumer == "" {
		return nil, fail(kNotAuthed, job.APINotAuthed)
	}
	if appKey == "" {
		return nil, fail(kInvalidKey, job.APIInvalidKey)
	}
	if consumer == "" {
		return nil, fail(kNotAuthed, job.APINotAuthed)
	}
	ts, err := strconv.ParseInt(h.Get(hdrTimestamp), 10, 64)
	if err != nil {
		return nil, fail(kOutOfTime, job.APIOutOfTime)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > s.cfg.TimeWindow || d < -s.cfg.TimeWindow {
		return nil, fail(kOutOfTime, job.APIOutOfTime)
	}
	if len(appKey) > 64 || len(consumer) > 128 {
		return nil, fail(kInvalidKey, job.APIInvalidKey)
	}
	cred, err := s.st.CredentialByAppKey(c.r.Context(), appKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fail(kInvalidKey, job.APIInvalidKey)
	}
	if err != nil {
		return nil, err
	}
	if !equal(hashToken(consumer), cred.ConsumerKeyHash) {
		return nil, fail(kInvalidCredential, job.APIInvalidCred)
	}
	if !cred.Valid(now) {
		return nil, fail(kInvalidCredential, job.APICredentialInvalid)
	}
	secret, err := s.cfg.Keys.Open(cred.SealedSecret, credentialAD(cred.AppKey))
	if err != nil {
		return nil, err // a wrong key file: ours, logged
	}
	sig := &sigCheck{cred: cred, ts: ts, got: h.Get(hdrSignature)}
	// The URL with or without the listener's port (signurl.go).
	for _, u := range SignedURLs(s.cfg.PublicURL, c.r.TLS != nil, c.r.Host, c.r.RequestURI) {
		sig.hashes = append(sig.hashes, signHash(string(secret), consumer, c.r.Method, u))
	}
	return sig, nil
}

// sigCheck is a signature being checked: the hashes of every URL the
// client may have signed, fed with the body as it arrives.
type sigCheck struct {
	hashes []hash.Hash
	cred   store.Credential
	ts     int64
	got    string // X-Ovh-Signature
}

func (g *sigCheck) Write(p []byte) (int, error) {
	for _, h := range g.hashes {
		h.Write(p)
	}
	return len(p), nil
}

// finishSignature ends a signature check once the body is in: the
// signature, then, for a request that changes something, that it was not
// seen before (a replay within the time window is refused on every
// instance: the store remembers it).
func (s *Server) finishSignature(c *call, g *sigCheck) error {
	ok := false
	for _, h := range g.hashes {
		ok = equal([]byte(signSum(h, g.ts)), []byte(g.got)) || ok
	}
	if !ok {
		return fail(kInvalidSignature, job.APIInvalidSig)
	}
	if m := c.r.Method; m != http.MethodGet && m != http.MethodHead {
		now := s.cfg.Clock.Now()
		h := sha256.Sum256([]byte("byoi signature\x00" + g.cred.AppKey + "\x00" + g.got))
		// Remembered until its timestamp leaves the window.
		until := time.Unix(g.ts, 0).Add(s.cfg.TimeWindow + time.Second)
		err := s.st.RememberSignature(c.r.Context(), h[:], until, now)
		if errors.Is(err, store.ErrExists) {
			return fail(kBadRequest, job.APIReplayed)
		}
		if err != nil {
			return err
		}
	}
	c.customer, c.who, c.credID = store.Customer{ID: g.cred.CustomerID, Name: g.cred.CustomerName}, g.cred.CustomerName, g.cred.ID
	return nil
}

// maxTokenLen bounds an access token (ours are 51 characters).
const maxTokenLen = 256

// accessToken is the customer of a valid access token, and the token.
func (s *Server) accessToken(ctx context.Context, tok string) (store.Customer, store.AccessToken, error) {
	t, err := s.st.AccessTokenByHash(ctx, hashToken(tok))
	if errors.Is(err, store.ErrNotFound) || err == nil && !t.Valid(s.cfg.Clock.Now()) {
		return store.Customer{}, store.AccessToken{}, fail(kBadToken, job.APIBadToken)
	}
	if err != nil {
		return store.Customer{}, store.AccessToken{}, err
	}
	return store.Customer{ID: t.CustomerID, Name: t.CustomerName}, t, nil
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
// only its own server's paths. A token a rescue script minted ends
// TokenGrace after its deployment ended done. An agent's request other
// than an event batch records that it is alive (at most once a
// heartbeat interval), which network boot reads.
func (s *Server) authAgent(c *call, ep endpoint) error {
	tok, ok := strings.CutPrefix(c.r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return fail(kNotAuthed, job.APINotAuthed)
	}
	if len(tok) > maxTokenLen {
		return fail(kBadToken, job.APIBadToken)
	}
	sv, err := s.st.ServerByAgentToken(c.r.Context(), hashToken(tok))
	if errors.Is(err, store.ErrNotFound) {
		return fail(kBadToken, job.APIBadToken)
	}
	if err != nil {
		return err
	}
	now := s.cfg.Clock.Now()
	if store.TokenExpired(sv, now, s.cfg.TokenGrace) {
		return fail(kBadToken, job.APIBadToken)
	}
	name := c.r.PathValue("server")
	if !equal([]byte(sv.Name), []byte(name)) {
		return fail(kForbidden, job.APIAgentNotAllowed, truncate(name, 64))
	}
	if !ep.events && now.Sub(sv.AgentSeen) >= s.cfg.AgentHeartbeat {
		if err := s.st.TouchAgent(c.r.Context(), sv.ID, now); err != nil {
			return err
		}
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
