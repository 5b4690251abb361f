package controlplane

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// OVH's own API for a customer's credentials (/me/api/credential): list
// them, read one, delete (revoke) one. A revoked credential fails at once
// on every instance (the API reads credentials on each request) and is
// gone from these answers, as OVH deletes it.

// credentialView is OVH's api.Credential.
type credentialView struct {
	AllowedIPs     []string   `json:"allowedIPs"`
	ApplicationID  int64      `json:"applicationId"`
	Creation       *string    `json:"creation"`
	CredentialID   int64      `json:"credentialId"`
	Expiration     *string    `json:"expiration"`
	LastUse        *string    `json:"lastUse"`
	OVHSupport     bool       `json:"ovhSupport"`
	Rules          []ruleView `json:"rules"`
	Status         string     `json:"status"`
	ApplicationKey string     `json:"applicationKey,omitempty"` // byoi addition: which one it is
}

// ruleView is OVH's api.Rule: a credential of ours opens every path.
type ruleView struct {
	Method string `json:"method"`
	Path   string `json:"path"`
}

var allRules = []ruleView{{"GET", "/*"}, {"POST", "/*"}, {"PUT", "/*"}, {"DELETE", "/*"}}

// credentialStatuses are OVH's api.CredentialStateEnum.
var credentialStatuses = map[string]bool{"expired": true, "pendingValidation": true, "refused": true, "validated": true}

func (s *Server) credentialStatus(c store.Credential) string {
	if c.Valid(s.cfg.Clock.Now()) {
		return "validated"
	}
	return "expired"
}

func (s *Server) credentialRoutes() {
	for _, p := range prefixes {
		s.handle(p+"/me/api/credential", map[string]endpoint{"GET": {auth: authCustomer, h: s.listCredentials}})
		s.handle(p+"/me/api/credential/{credentialId}", map[string]endpoint{
			"GET":    {auth: authCustomer, h: s.getCredential},
			"DELETE": {auth: authCustomer, h: s.deleteCredential},
		})
	}
}

func (s *Server) listCredentials(c *call) (int, any, error) {
	want := c.r.URL.Query().Get("status")
	if want != "" && !credentialStatuses[want] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "status", "expired, pendingValidation, refused or validated")
	}
	list, err := s.st.Credentials(c.r.Context(), c.customer.ID)
	if err != nil {
		return 0, nil, err
	}
	ids := []int64{}
	for _, cr := range list {
		if cr.RevokedAt.IsZero() && (want == "" || want == s.credentialStatus(cr)) {
			ids = append(ids, cr.ID)
		}
	}
	return http.StatusOK, ids, nil
}

// ownCredential is the path's credential when the caller owns it and it
// is not revoked; any other looks the same (404).
func (s *Server) ownCredential(c *call) (store.Credential, error) {
	raw := c.r.PathValue("credentialId")
	notFound := fail(kNotFound, job.APINotFound, "credentialId = "+truncate(raw, 20))
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return store.Credential{}, notFound
	}
	cr, err := s.st.CredentialByID(c.r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || err == nil && (cr.CustomerID != c.customer.ID || !cr.RevokedAt.IsZero()) {
		return store.Credential{}, notFound
	}
	return cr, err
}

func (s *Server) getCredential(c *call) (int, any, error) {
	cr, err := s.ownCredential(c)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, credentialView{ApplicationID: cr.ID, Creation: rfc3339(cr.CreatedAt), CredentialID: cr.ID, Expiration: rfc3339(cr.ExpiresAt),
		Rules: allRules, Status: s.credentialStatus(cr), ApplicationKey: cr.AppKey}, nil
}

func (s *Server) deleteCredential(c *call) (int, any, error) {
	cr, err := s.ownCredential(c)
	if err != nil {
		return 0, nil, err
	}
	if err := s.st.RevokeCredential(c.r.Context(), c.customer.ID, cr.ID, s.cfg.Clock.Now()); err != nil {
		return 0, nil, err
	}
	s.log.Info("credential revoked by its customer", "customer", c.customer.Name, "credential", cr.ID)
	return http.StatusOK, nil, nil
}
