// Package panel is the Control Panel of byoi-api: a web page, served at
// /panel/ with its HTML, CSS and script embedded in the binary (no CDN, no
// build step), where a customer signs in with an access token, sees its
// servers, installs a custom image with the form OVH customers know
// ("Install from custom image") and watches the deployment happen.
//
// The panel is a thin client of the customer API. Once the session cookie
// is checked (and, for every state-changing request, the CSRF token), a
// request to /panel/api/dedicated/server/... is served by the customer
// API's own handlers as that customer (Backend.ServeCustomerAPI): the
// same ownership checks, validation, deployment creation and error
// answers as /1.0. The form's validation before submit runs the same
// checks (Backend.CheckJob) and answers with the API's message and the
// JSON path of the field it is about.
//
// Security: sessions live in the database (store.Session, only the hash
// of the cookie's id), so any instance serves them; the cookie is
// HttpOnly, SameSite=Strict, Secure over TLS; the CSRF token is derived
// from the session id and required in X-CSRF-Token on every POST, PUT,
// PATCH and DELETE (sign-in included: before a session, a pre-session
// cookie plays its part); a strict Content-Security-Policy forbids inline
// scripts and styles; the page renders every string it receives as text
// (textContent, never innerHTML), and no secret (header values, user data)
// is ever sent back to it.
package panel

import (
	"context"
	"embed"
	"encoding/json"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

//go:embed static
var staticFS embed.FS

// index is the page; every view is in it, the script shows one.
var index = template.Must(template.ParseFS(staticFS, "static/index.html"))

// Backend is what the panel needs of the customer API
// (controlplane.Server implements it).
type Backend interface {
	// AccessToken is the customer of a valid access token (the customer
	// API's Bearer token) and the token, or an error.
	AccessToken(ctx context.Context, token string) (store.Customer, store.AccessToken, error)
	// ReadBody reads a request's body with the API's deadline and memory
	// budget, answering a refusal itself (ok false); release gives the
	// memory back.
	ReadBody(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, release func(), ok bool)
	// ServeCustomerAPI serves r, whose path is a customer API path under
	// /1.0, as customer cu: the API's handlers, ownership checks, body
	// limits and error answers.
	ServeCustomerAPI(w http.ResponseWriter, r *http.Request, cu store.Customer)
	// CheckJob runs every check that posting body in shape to cu's server
	// runs, creating nothing, and writes the API's answer: 200 {} or the
	// refusal (with details.field and details.code for a job refused).
	CheckJob(w http.ResponseWriter, r *http.Request, cu store.Customer, server string, shape job.Shape, body []byte)
}

// Config configures the panel.
type Config struct {
	Backend Backend
	Store   store.Store
	Logger  *slog.Logger     // discard when nil
	Now     func() time.Time // time.Now when nil
	// PublicURL is the URL clients reach byoi-api's root at, when behind
	// a proxy: its path prefixes the cookies' path, and an https scheme
	// makes them Secure.
	PublicURL string
	// SessionTTL is how long a sign-in lasts (default 12 hours).
	SessionTTL time.Duration
}

// Prefix is where the panel is served.
const Prefix = "/panel/"

// CSP is the panel's Content-Security-Policy: scripts, styles and
// connections only from the panel's own origin, no inline script or
// style, no framing, no form posts elsewhere.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Panel serves the Control Panel.
type Panel struct {
	cfg        Config
	log        *slog.Logger
	mux        *http.ServeMux
	static     http.Handler
	cookiePath string
	secureURL  bool
}

// New returns the panel's handler, to be mounted at Prefix.
func New(cfg Config) *Panel {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	p := &Panel{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), cookiePath: Prefix}
	if u, err := url.Parse(cfg.PublicURL); err == nil && cfg.PublicURL != "" {
		p.cookiePath = strings.TrimSuffix(u.Path, "/") + Prefix
		p.secureURL = u.Scheme == "https"
	}
	sub, _ := fs.Sub(staticFS, "static")
	p.static = http.StripPrefix(Prefix+"static/", http.FileServerFS(sub))
	p.mux.HandleFunc("GET "+Prefix+"{$}", p.page)
	p.mux.HandleFunc("GET "+Prefix+"static/", p.asset)
	p.mux.HandleFunc("GET "+Prefix+"api/session", p.session)
	p.mux.HandleFunc("POST "+Prefix+"api/login", p.login)
	p.mux.HandleFunc("POST "+Prefix+"api/logout", p.logout)
	p.mux.HandleFunc("POST "+Prefix+"api/validate/{server}", p.validate)
	p.mux.HandleFunc(Prefix+"api/dedicated/server", p.proxy)
	p.mux.HandleFunc(Prefix+"api/dedicated/server/", p.proxy)
	p.mux.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		refuse(w, http.StatusNotFound, job.APINotFound, "path")
	})
	return p
}

// ServeHTTP sets the security headers of every answer, then routes.
func (p *Panel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	p.mux.ServeHTTP(w, r)
}

// pageData is what the page template receives: nothing a customer
// provided, only the CSRF token and the form's fixed choices.
type pageData struct {
	CSRF          string
	ImageTypes    []string
	ChecksumTypes []string
}

// imageTypes and checksumTypes are the form's choices, the job package's
// enums (OVA joins when the job package accepts it).
var (
	imageTypes    = job.ImageTypes
	checksumTypes = []string{"sha256", "sha512", "sha1", "md5"}
)

func (p *Panel) page(w http.ResponseWriter, r *http.Request) {
	var csrf string
	if id, _, ok := p.currentSession(r); ok {
		csrf = csrfToken(id)
	} else {
		csrf = csrfToken(p.preSession(w, r))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := index.Execute(w, pageData{CSRF: csrf, ImageTypes: imageTypes, ChecksumTypes: checksumTypes}); err != nil {
		p.log.Error("panel page", "err", err)
	}
}

func (p *Panel) asset(w http.ResponseWriter, r *http.Request) {
	// Files only: no directory index (FileServer would serve the page's
	// raw template as static/'s index).
	if r.URL.Path == Prefix+"static/index.html" || strings.HasSuffix(r.URL.Path, "/") {
		refuse(w, http.StatusNotFound, job.APINotFound, "path")
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	p.static.ServeHTTP(w, r)
}

// errorBody is the customer API's error shape, for the panel's own
// refusals.
type errorBody struct {
	Class   string `json:"class"`
	Message string `json:"message"`
}

var classes = map[int]string{
	http.StatusBadRequest:            "Client::BadRequest",
	http.StatusUnauthorized:          "Client::Unauthorized",
	http.StatusForbidden:             "Client::Forbidden",
	http.StatusNotFound:              "Client::NotFound",
	http.StatusMethodNotAllowed:      "Client::MethodNotAllowed",
	http.StatusRequestEntityTooLarge: "Client::RequestEntityTooLarge",
	http.StatusInternalServerError:   "Server::InternalServerError",
}

// refuse answers with the API's error shape and a catalog message.
func refuse(w http.ResponseWriter, status int, code job.Code, args ...any) {
	writeJSON(w, status, errorBody{Class: classes[status], Message: job.Text(code, args...)})
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
