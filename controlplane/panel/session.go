package panel

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Cookies. The session cookie holds a random 256-bit id; the database has
// only its SHA-256. The pre-session cookie exists before sign-in, so that
// the sign-in request too carries a CSRF token bound to this browser.
const (
	sessionCookie    = "byoi_session"
	preSessionCookie = "byoi_presession"
	csrfHeader       = "X-CSRF-Token"
	preSessionTTL    = 3600 // seconds
	maxSmallBody     = 4 << 10
	maxTokenLen      = 256
)

func newID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashID(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

// csrfToken is the CSRF token of a session (or pre-session) id: an HMAC
// keyed by the id, so only the page that was given it (or can read the
// HttpOnly cookie, which no script can) knows it, and every instance
// computes the same one.
func csrfToken(id string) string {
	m := hmac.New(sha256.New, []byte(id))
	m.Write([]byte("byoi panel csrf"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (p *Panel) secure(r *http.Request) bool { return r.TLS != nil || p.secureURL }

func (p *Panel) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: p.cookiePath, MaxAge: maxAge,
		HttpOnly: true, Secure: p.secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// preSession returns the request's pre-session id, setting a new one when
// it has none.
func (p *Panel) preSession(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(preSessionCookie); err == nil && validID(c.Value) {
		return c.Value
	}
	id := newID()
	p.setCookie(w, r, preSessionCookie, id, preSessionTTL)
	return id
}

func validID(s string) bool {
	if len(s) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil
}

// currentSession is the request's valid session: its id and customer.
func (p *Panel) currentSession(r *http.Request) (string, store.Customer, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || !validID(c.Value) {
		return "", store.Customer{}, false
	}
	se, err := p.cfg.Store.SessionByHash(r.Context(), hashID(c.Value), p.cfg.Now())
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			p.log.Error("panel session", "err", err)
		}
		return "", store.Customer{}, false
	}
	cu, err := p.cfg.Store.Customer(r.Context(), se.CustomerID)
	if err != nil {
		return "", store.Customer{}, false
	}
	return c.Value, cu, true
}

// stateChanging reports whether a method changes state (CSRF-checked).
func stateChanging(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// checkCSRF checks a state-changing request: the token derived from id in
// X-CSRF-Token, and, when the browser tells (Sec-Fetch-Site), that the
// request comes from the panel's own origin.
func checkCSRF(r *http.Request, id string) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	got := r.Header.Get(csrfHeader)
	return id != "" && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(csrfToken(id))) == 1
}

// authed runs h for a signed-in customer; state-changing requests must
// carry the session's CSRF token.
func (p *Panel) authed(w http.ResponseWriter, r *http.Request, h func(id string, cu store.Customer)) {
	id, cu, ok := p.currentSession(r)
	if !ok {
		refuse(w, http.StatusUnauthorized, job.APINotAuthed)
		return
	}
	if stateChanging(r.Method) && !checkCSRF(r, id) {
		p.log.Warn("panel: CSRF token refused", "method", r.Method, "path", r.URL.Path, "customer", cu.Name)
		refuse(w, http.StatusForbidden, job.APICSRF)
		return
	}
	h(id, cu)
}

type sessionView struct {
	Customer string `json:"customer"`
	CSRF     string `json:"csrf"`
}

func (p *Panel) session(w http.ResponseWriter, r *http.Request) {
	p.authed(w, r, func(id string, cu store.Customer) {
		writeJSON(w, http.StatusOK, sessionView{Customer: cu.Name, CSRF: csrfToken(id)})
	})
}

// login exchanges an access token for a session.
func (p *Panel) login(w http.ResponseWriter, r *http.Request) {
	pre, err := r.Cookie(preSessionCookie)
	if err != nil || !validID(pre.Value) || !checkCSRF(r, pre.Value) {
		refuse(w, http.StatusForbidden, job.APICSRF)
		return
	}
	body, release, ok := p.cfg.Backend.ReadBody(w, r, maxSmallBody)
	defer release()
	if !ok {
		return
	}
	var in struct {
		Token string `json:"token"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if dec.Decode(&in) != nil || in.Token == "" || len(in.Token) > maxTokenLen {
		refuse(w, http.StatusUnauthorized, job.APIBadToken)
		return
	}
	cu, tok, err := p.cfg.Backend.AccessToken(r.Context(), in.Token)
	if err != nil {
		refuse(w, http.StatusUnauthorized, job.APIBadToken)
		return
	}
	if old, err := r.Cookie(sessionCookie); err == nil && validID(old.Value) {
		p.cfg.Store.DeleteSession(r.Context(), hashID(old.Value))
	}
	id := newID()
	now := p.cfg.Now()
	// The session ends with the token (revoking it deletes the session;
	// one that expires sooner ends it sooner).
	expires := now.Add(p.cfg.SessionTTL)
	if !tok.ExpiresAt.IsZero() && tok.ExpiresAt.Before(expires) {
		expires = tok.ExpiresAt
	}
	if err := p.cfg.Store.CreateSession(r.Context(), store.Session{IDHash: hashID(id), CustomerID: cu.ID, CreatedAt: now, ExpiresAt: expires, AccessTokenID: tok.ID}); err != nil {
		p.log.Error("panel: create session", "err", err)
		refuse(w, http.StatusInternalServerError, job.APIInternal)
		return
	}
	p.setCookie(w, r, sessionCookie, id, int(expires.Sub(now).Seconds()))
	p.setCookie(w, r, preSessionCookie, "", -1)
	p.log.Info("panel: signed in", "customer", cu.Name)
	writeJSON(w, http.StatusOK, sessionView{Customer: cu.Name, CSRF: csrfToken(id)})
}

func (p *Panel) logout(w http.ResponseWriter, r *http.Request) {
	p.authed(w, r, func(id string, cu store.Customer) {
		if err := p.cfg.Store.DeleteSession(r.Context(), hashID(id)); err != nil {
			p.log.Error("panel: delete session", "err", err)
			refuse(w, http.StatusInternalServerError, job.APIInternal)
			return
		}
		p.setCookie(w, r, sessionCookie, "", -1)
		p.log.Info("panel: signed out", "customer", cu.Name)
		w.WriteHeader(http.StatusNoContent)
	})
}

// validate runs the checks of POST .../reinstall on the form's body.
func (p *Panel) validate(w http.ResponseWriter, r *http.Request) {
	p.authed(w, r, func(_ string, cu store.Customer) {
		body, release, ok := p.cfg.Backend.ReadBody(w, r, job.MaxJobSize)
		defer release()
		if !ok {
			return
		}
		p.cfg.Backend.CheckJob(w, r, cu, r.PathValue("server"), job.ShapeReinstall, body)
	})
}

// proxy serves /panel/api/dedicated/server... with the customer API's own
// handlers, as the signed-in customer.
func (p *Panel) proxy(w http.ResponseWriter, r *http.Request) {
	p.authed(w, r, func(_ string, cu store.Customer) {
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/1.0/" + strings.TrimPrefix(r.URL.Path, Prefix+"api/")
		r2.URL.RawPath = ""
		p.cfg.Backend.ServeCustomerAPI(w, r2, cu)
	})
}
