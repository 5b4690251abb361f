// Package controlplane is byoi-api: the customer API (OVH's paths and
// shapes under /1.0 and /v1, authenticated as OVH's own Go client does it)
// and the agent API (agentapi), over a store.Store.
//
// Handlers are thin: decode (size-limited, strict), authorize, call the
// store, encode. Every refusal goes through one table (errors.go); every
// text a customer sees comes from job's catalog. Nothing that matters
// lives in an instance's memory: several instances may share a database.
package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/imagecache"
	"github.com/byoi/byoi/controlplane/metrics"
	"github.com/byoi/byoi/controlplane/panel"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Clock tells the time and paces loops; tests use a fake one.
type Clock interface {
	Now() time.Time
	// NewTicker returns a channel that ticks every d and a stop function.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// Config configures a Server.
type Config struct {
	Store  store.Store
	Keys   *Keyring
	Logger *slog.Logger // discard when nil
	Clock  Clock        // real time when nil
	// PublicURL is the URL clients reach this server's root at, when
	// behind a proxy ("https://api.example.com/byoi"): signatures are
	// checked against it instead of the request's own scheme and host.
	PublicURL string
	// TimeWindow is how far a signed request's timestamp may be from the
	// server's clock (default 5 minutes).
	TimeWindow time.Duration
	// AgentTimeout fails a deployment whose agent has been silent that
	// long (default 5 minutes).
	AgentTimeout time.Duration
	// PickupTimeout fails a deployment no agent picked up that long after
	// it was created; 0 waits for ever (the customer can DELETE it).
	PickupTimeout time.Duration
	// SweepEvery is how often the timeout loop looks (default 15 s).
	SweepEvery time.Duration
	// Netboot, when set, serves servers booting from the network through
	// iPXE (netboot.go).
	Netboot *NetbootConfig
	// AgentHeartbeat is the agent's heartbeat interval (default 30 s, the
	// agent's): an agent heard from within 3 of them is live, and network
	// boot never takes its token; one silent for longer gets a new token
	// at its server's next rescue script.
	AgentHeartbeat time.Duration
	// TokenGrace is how long after its deployment ended done a token a
	// rescue script minted keeps working (default 15 minutes: the agent
	// posts its boot info, then reboots to the disk, whose script revokes
	// it at once).
	TokenGrace time.Duration
	// MaxAttempts fails a deployment whose agent would open one attempt
	// more (an agent that crashes mid-deployment starts over): default 3;
	// negative: no cap.
	MaxAttempts int
	// BodyMemory caps the bytes of request bodies held in memory at once,
	// every request together (default 256 MiB); beyond, a request gets
	// 503 and Retry-After.
	BodyMemory int64
	// BodyTimeout bounds the time a request's body may take to arrive:
	// BodyTimeout plus its size at BodyMinRate (defaults 10 s and 64 KiB/s).
	BodyTimeout time.Duration
	BodyMinRate int64
	// Power configures power control through servers' BMCs
	// (power_tasks.go); the zero value has the defaults.
	Power PowerConfig
	// Facts are the operator's facts about servers (datacenter, ip, ...)
	// for OVH's server fields; nil: none (those fields are null).
	Facts *FactsFile
	// ImageCache, when set, serves the agents' images (imagecache.go);
	// Metrics, when set, counts requests and agent events (metrics.go).
	ImageCache *imagecache.Cache
	Metrics    *metrics.Metrics
}

// Server serves the customer and agent APIs.
type Server struct {
	cfg   Config
	st    store.Store
	log   *slog.Logger
	mux   *http.ServeMux
	mem   *budget      // bodies in flight
	limit *rateLimiter // network boot, per source address
	// states: the BMCs' power states, cached briefly (power_tasks.go).
	states powerStates
	table  []route // every route handle registered, for the schema documents
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("controlplane: Store and Keys are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.TimeWindow <= 0 {
		cfg.TimeWindow = 5 * time.Minute
	}
	if cfg.AgentTimeout <= 0 {
		cfg.AgentTimeout = 5 * time.Minute
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = 15 * time.Second
	}
	if cfg.AgentHeartbeat <= 0 {
		cfg.AgentHeartbeat = 30 * time.Second
	}
	if cfg.TokenGrace <= 0 {
		cfg.TokenGrace = 15 * time.Minute
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.MaxAttempts < 0 {
		cfg.MaxAttempts = 0
	}
	if cfg.BodyMemory <= 0 {
		cfg.BodyMemory = 256 << 20
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 10 * time.Second
	}
	if cfg.BodyMinRate <= 0 {
		cfg.BodyMinRate = 64 << 10
	}
	cfg.Power.defaults()
	cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	if cfg.Netboot != nil {
		nb := *cfg.Netboot
		nb.BootURL = strings.TrimSuffix(nb.BootURL, "/")
		if err := nb.Check(); err != nil {
			return nil, fmt.Errorf("controlplane: network boot: %w", err)
		}
		cfg.Netboot = &nb
	}
	s := &Server{cfg: cfg, st: cfg.Store, log: cfg.Logger, mux: http.NewServeMux(), mem: newBudget(cfg.BodyMemory)}
	if nb := cfg.Netboot; nb != nil {
		s.limit = newRateLimiter(nb.RatePerMinute, nb.Burst, nb.TrustedProxies)
	}
	s.routes()
	return s, nil
}

// Handler returns the HTTP handler. Every answer carries an
// X-Ovh-QueryID, also those the router writes itself (a path-cleaning
// redirect).
func (s *Server) Handler() http.Handler {
	h := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Ovh-QueryID", queryID())
		s.mux.ServeHTTP(w, r)
	}))
	if s.cfg.Metrics != nil {
		h = s.cfg.Metrics.Instrument(h)
	}
	return h
}

// Part is a part of byoi-api's HTTP surface, for serving the parts on
// separate listeners (the customer API on the internet, network boot and
// the agent API on the provisioning network).
type Part int

// Parts.
const (
	// PartCustomer: the customer API (/1.0, /v1), the Control Panel
	// (/panel/) and every other path.
	PartCustomer Part = 1 << iota
	// PartAgent: the agent API (/agent/v1/).
	PartAgent
	// PartBoot: network boot (/boot/).
	PartBoot
	PartAll = PartCustomer | PartAgent | PartBoot
)

// PartOf is the part a request path belongs to.
func PartOf(path string) Part {
	switch {
	case path == "/boot" || strings.HasPrefix(path, "/boot/"):
		return PartBoot
	case path == agentapi.Prefix || strings.HasPrefix(path, agentapi.Prefix+"/"):
		return PartAgent
	}
	return PartCustomer
}

// HandlerFor serves only the given parts: a path of another part gets 404
// as if it did not exist.
func (s *Server) HandlerFor(parts Part) http.Handler {
	h := s.Handler()
	if parts == PartAll {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if PartOf(r.URL.Path)&parts == 0 {
			w.Header().Set("X-Ovh-QueryID", queryID())
			s.serve(w, r, endpoint{h: s.notFound})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Body limits of requests that are not jobs.
const (
	maxSmallBody = 4 << 10
)

type authKind int

const (
	authNone authKind = iota
	authCustomer
	authAgent
)

// call is one request being served.
type call struct {
	w        http.ResponseWriter
	r        *http.Request
	body     []byte
	customer store.Customer
	server   store.Server // the path's server, owned by the caller
	qid      string
	who      string // for the request log: customer or server name
	// bodyRead: the body was read to its end (else an answer closes the
	// connection rather than reading what an unauthenticated client
	// still sends).
	bodyRead bool
	release  func() // gives the body's memory back
	credID   int64  // the signature credential that authenticated the call
}

type handler func(c *call) (status int, v any, err error)

type endpoint struct {
	auth    authKind
	maxBody int64
	h       handler
	// events: the agent's event batches, whose deployment row records
	// the agent's life (no TouchAgent).
	events bool
}

// handle registers pattern (no method) with one endpoint per method; other
// methods get OVH's error body with 405.
func (s *Server) handle(pattern string, methods map[string]endpoint) {
	allow := make([]string, 0, len(methods))
	for m := range methods {
		allow = append(allow, m)
	}
	s.table = append(s.table, route{pattern, methods})
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		ep, ok := methods[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			s.serve(w, r, endpoint{h: func(c *call) (int, any, error) { return 0, nil, fail(kMethod, job.APIMethod, r.Method) }})
			return
		}
		s.serve(w, r, ep)
	})
}

// serve runs one endpoint: query id, size-limited body, authentication,
// the handler, the JSON answer and the request log.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, ep endpoint) {
	start := time.Now()
	c := &call{w: w, r: r, qid: w.Header().Get("X-Ovh-QueryID")}
	defer func() {
		if c.release != nil {
			c.release()
		}
	}()
	status, v, err := s.run(c, ep)
	if !c.bodyRead && r.ContentLength != 0 {
		// Refused before its body was read: do not read it now.
		w.Header().Set("Connection", "close")
	}
	if err != nil {
		var body errorBody
		var ours bool
		status, body, ours = describe(err)
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		if ours {
			s.log.Error("request failed", "qid", c.qid, "method", r.Method, "route", r.Pattern, "err", err)
		}
		writeJSON(w, status, body)
	} else if status == http.StatusNoContent {
		w.WriteHeader(status)
	} else {
		writeJSON(w, status, v)
	}
	// The request log: no query string, body or header (they may carry
	// secrets: signatures, tokens, pre-signed URLs).
	s.log.Info("request", "qid", c.qid, "method", r.Method, "path", redactPath(r.URL.Path), "status", status, "who", c.who, "ms", time.Since(start).Milliseconds())
}

func (s *Server) run(c *call, ep endpoint) (int, any, error) {
	r := c.r
	limit := ep.maxBody
	if limit == 0 {
		limit = maxSmallBody
	}
	if r.ContentLength > limit {
		return 0, nil, &http.MaxBytesError{Limit: limit}
	}
	// Everything that needs no body first: an unauthenticated client
	// sends nothing that is read (its body pins no memory, takes no time).
	var sig *sigCheck
	switch ep.auth {
	case authCustomer:
		var err error
		if sig, err = s.authCustomer(c); err != nil {
			return 0, nil, err
		}
	case authAgent:
		if err := s.authAgent(c, ep); err != nil {
			return 0, nil, err
		}
	}
	var hash io.Writer
	if sig != nil {
		hash = sig
	}
	body, release, err := s.readBody(c.w, r, limit, hash)
	c.release = release
	if err != nil {
		return 0, nil, err
	}
	c.body, c.bodyRead = body, true
	if sig != nil {
		if err := s.finishSignature(c, sig); err != nil {
			return 0, nil, err
		}
	}
	if ep.auth == authCustomer {
		if name := r.PathValue("serviceName"); name != "" {
			if err := s.ownServer(c, name); err != nil {
				return 0, nil, err
			}
		}
	}
	return ep.h(c)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"class":"Server::InternalServerError","message":"internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

// queryID is the X-Ovh-QueryID of a request, as OVH sends on every answer.
func queryID() string {
	var b [12]byte
	rand.Read(b[:])
	return "BYOI.api." + hex.EncodeToString(b[:])
}

// prefixes of the customer API: go-ovh's endpoint ends in /1.0, and a path
// starting with /v1/ drops it.
var prefixes = []string{"/1.0", "/v1"}

func (s *Server) routes() {
	for _, p := range prefixes {
		d := p + "/dedicated/server/{serviceName}"
		s.handle(p+"/auth/time", map[string]endpoint{"GET": {auth: authNone, h: s.getTime}})
		s.handle(p+"/dedicated/server", map[string]endpoint{"GET": {auth: authCustomer, h: s.listServers}})
		s.handle(d, map[string]endpoint{
			"GET": {auth: authCustomer, h: s.getServer},
			"PUT": {auth: authCustomer, h: s.putServer},
		})
		s.handle(d+"/boot", map[string]endpoint{"GET": {auth: authCustomer, h: s.listBoots}})
		s.handle(d+"/boot/{bootId}", map[string]endpoint{"GET": {auth: authCustomer, h: s.getBoot}})
		s.handle(d+"/bringYourOwnImage", map[string]endpoint{
			"POST":   {auth: authCustomer, maxBody: maxJobBody, h: s.postBYOI},
			"GET":    {auth: authCustomer, h: s.getBYOI},
			"DELETE": {auth: authCustomer, h: s.deleteBYOI},
		})
		s.handle(d+"/bringYourOwnImage/history", map[string]endpoint{"GET": {auth: authCustomer, h: s.history}})
		s.handle(d+"/bringYourOwnImage/events", map[string]endpoint{"GET": {auth: authCustomer, h: s.events}})
		s.handle(d+"/bringYourOwnImage/hardware", map[string]endpoint{"GET": {auth: authCustomer, h: s.hardwareDetail}})
		s.handle(d+"/reinstall", map[string]endpoint{"POST": {auth: authCustomer, maxBody: maxJobBody, h: s.postReinstall}})
		s.handle(d+"/task/{taskId}", map[string]endpoint{"GET": {auth: authCustomer, h: s.getTask}})
		s.handle(d+"/install/status", map[string]endpoint{"GET": {auth: authCustomer, h: s.installStatus}})
		s.handle(d+"/specifications/hardware", map[string]endpoint{"GET": {auth: authCustomer, h: s.hardware}})
		s.ovhRoutes(p, d) // issue 24
		s.schemaRoutes(p) // issue 24
	}
	a := agentapi.Prefix + "/servers/{server}"
	s.handle(a+"/inventory", map[string]endpoint{"POST": {auth: authAgent, maxBody: agentapi.MaxInventoryBody, h: s.agentInventory}})
	s.handle(a+"/job", map[string]endpoint{"GET": {auth: authAgent, h: s.agentJob}})
	s.handle(a+"/deployments/{id}/attempts", map[string]endpoint{"POST": {auth: authAgent, h: s.agentAttempt}})
	s.handle(a+"/deployments/{id}/events", map[string]endpoint{"POST": {auth: authAgent, maxBody: agentapi.MaxEventsBody, h: s.agentEvents, events: true}})
	s.credentialRoutes()
	s.bootedRoutes()
	s.logRoutes()
	s.netbootRoutes()
	s.imageRoutes()
	s.mux.Handle(panel.Prefix, panel.New(panel.Config{Backend: s, Store: s.st, Logger: s.log, Now: s.cfg.Clock.Now, PublicURL: s.cfg.PublicURL}))
	s.handle("/", map[string]endpoint{
		"GET": {h: s.notFound}, "POST": {h: s.notFound}, "PUT": {h: s.notFound}, "DELETE": {h: s.notFound},
	})
}

func (s *Server) notFound(c *call) (int, any, error) {
	return 0, nil, fail(kNotFound, job.APINotFound, "path")
}

// RunTimeouts runs the agent-silence loop until ctx ends.
func (s *Server) RunTimeouts(ctx context.Context) {
	tick, stop := s.cfg.Clock.NewTicker(s.cfg.SweepEvery)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("timeout sweep failed", "err", err)
			}
		}
	}
}

// Sweep fails the deployments whose agent went silent (or never came, with
// a pickup timeout). The database decides which instance fails each one.
func (s *Server) Sweep(ctx context.Context) ([]store.Expired, error) {
	now := s.cfg.Clock.Now()
	var pickup time.Time
	if s.cfg.PickupTimeout > 0 {
		pickup = now.Add(-s.cfg.PickupTimeout)
	}
	exp, err := s.st.ExpireSilent(ctx, now, now.Add(-s.cfg.AgentTimeout), pickup, s.cfg.AgentTimeout, s.cfg.PickupTimeout)
	for _, e := range exp {
		s.log.Warn("deployment failed: agent silent", "deployment", e.DeploymentID, "task", e.TaskID)
	}
	return exp, err
}
