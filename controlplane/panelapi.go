package controlplane

import (
	"context"
	"net/http"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The Control Panel (package panel) authenticates customers with its own
// session cookie, then uses the customer API through these methods: the
// same handlers, ownership checks, job checks and error table as /1.0.

// panelCustomerKey marks a request the panel authenticated. Only
// ServeCustomerAPI sets it: no request from outside can carry it.
type panelCustomerKey struct{}

// AccessToken is the customer of a valid access token (the customer API's
// Bearer token), and the token.
func (s *Server) AccessToken(ctx context.Context, token string) (store.Customer, store.AccessToken, error) {
	if token == "" || len(token) > maxTokenLen {
		return store.Customer{}, store.AccessToken{}, fail(kBadToken, job.APIBadToken)
	}
	return s.accessToken(ctx, token)
}

// ServeCustomerAPI serves r, whose path is a customer API path under
// /1.0, as customer cu.
func (s *Server) ServeCustomerAPI(w http.ResponseWriter, r *http.Request, cu store.Customer) {
	w.Header().Set("X-Ovh-QueryID", queryID())
	s.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), panelCustomerKey{}, cu)))
}

// CheckJob runs every check of posting body in shape to cu's server, and
// creates nothing: 200 {} or the refusal POST would answer.
func (s *Server) CheckJob(w http.ResponseWriter, r *http.Request, cu store.Customer, server string, shape job.Shape, body []byte) {
	w.Header().Set("X-Ovh-QueryID", queryID())
	sv, err := s.customerServer(r.Context(), cu, server)
	if err == nil {
		_, err = checkJob(sv, shape, body)
	}
	if err != nil {
		status, b, ours := describe(err)
		if ours {
			s.log.Error("job check failed", "err", err)
		}
		writeJSON(w, status, b)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// panelCustomer is the customer the panel authenticated r for.
func panelCustomer(r *http.Request) (store.Customer, bool) {
	cu, ok := r.Context().Value(panelCustomerKey{}).(store.Customer)
	return cu, ok
}
