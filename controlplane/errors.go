package controlplane

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// kind is a class of API error. errTable gives each its HTTP status and
// OVH class: the one place that decides what a refusal looks like.
type kind int

const (
	kBadRequest kind = iota + 1
	kTaskExists
	kNotFound
	kNotAuthed
	kBadToken
	kInvalidKey
	kInvalidCredential
	kInvalidSignature
	kOutOfTime
	kForbidden
	kTooLarge
	kMethod
	kStaleAttempt
	kGone
	kInternal
	kBusy
	kBodyTimeout
)

// errTable maps a kind to (HTTP status, OVH class). The auth kinds also
// carry OVH's errorCode, which OVH's API sends with them.
var errTable = map[kind]struct {
	status    int
	class     string
	errorCode string
}{
	kBadRequest:        {http.StatusBadRequest, "Client::BadRequest", ""},
	kTaskExists:        {http.StatusConflict, "Client::BadRequest::TaskAlreadyExists", ""},
	kNotFound:          {http.StatusNotFound, "Client::NotFound", ""},
	kNotAuthed:         {http.StatusUnauthorized, "Client::Unauthorized", "NOT_CREDENTIAL"},
	kBadToken:          {http.StatusUnauthorized, "Client::Unauthorized", "INVALID_CREDENTIAL"},
	kInvalidKey:        {http.StatusForbidden, "Client::Forbidden", "INVALID_KEY"},
	kInvalidCredential: {http.StatusForbidden, "Client::Forbidden", "INVALID_CREDENTIAL"},
	kInvalidSignature:  {http.StatusBadRequest, "Client::BadRequest", "INVALID_SIGNATURE"},
	kOutOfTime:         {http.StatusBadRequest, "Client::BadRequest", "QUERY_TIME_OUT"},
	kForbidden:         {http.StatusForbidden, "Client::Forbidden", ""},
	kTooLarge:          {http.StatusRequestEntityTooLarge, "Client::RequestEntityTooLarge", ""},
	kMethod:            {http.StatusMethodNotAllowed, "Client::MethodNotAllowed", ""},
	kStaleAttempt:      {http.StatusConflict, "Client::Conflict", ""},
	kGone:              {http.StatusGone, "Client::Gone", ""},
	kInternal:          {http.StatusInternalServerError, "Server::InternalServerError", ""},
	kBusy:              {http.StatusServiceUnavailable, "Server::ServiceUnavailable", ""},
	kBodyTimeout:       {http.StatusRequestTimeout, "Client::RequestTimeout", ""},
}

// apiError is an error the API returns: its kind and the customer-facing
// message (always from the catalog).
type apiError struct {
	kind    kind
	message string
}

func (e *apiError) Error() string { return e.message }

func fail(k kind, code job.Code, args ...any) *apiError {
	return &apiError{kind: k, message: job.Text(code, args...)}
}

// errorBody is OVH's error body.
type errorBody struct {
	Class     string `json:"class"`
	Message   string `json:"message"`
	ErrorCode string `json:"errorCode,omitempty"`
	HTTPCode  string `json:"httpCode,omitempty"`
	// Details of a refused job (OVH's error bodies carry a details map,
	// which go-ovh decodes into APIError.Details): "field", the JSON path
	// of what was wrong, and "code", the catalog code of the message. The
	// Control Panel shows the message next to that field.
	Details map[string]string `json:"details,omitempty"`
}

// describe maps any error a handler returns to what the client sees. The
// second result tells whether the error is ours (logged in full).
func describe(err error) (int, errorBody, bool) {
	var ae *apiError
	var ve *job.ValidationError
	var details map[string]string
	var tr *store.TaskRunningError
	var se *store.StaleAttemptError
	var mb *http.MaxBytesError
	var ex *store.AttemptsExhaustedError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &ve):
		ae = &apiError{kind: kBadRequest, message: ve.Message}
		details = map[string]string{"field": ve.Field, "code": string(ve.Code)}
	case errors.As(err, &tr):
		ae = &apiError{kind: kTaskExists, message: tr.Error()}
	case errors.As(err, &ex):
		ae = fail(kGone, job.APIAttemptsExhausted, ex.Attempts)
	case errors.As(err, &se):
		ae = fail(kStaleAttempt, job.APIStaleAttempt, se.Got, se.Current)
	case errors.As(err, &mb):
		ae = fail(kTooLarge, job.APIBodyTooLarge, mb.Limit)
	case errors.Is(err, store.ErrGone):
		ae = fail(kGone, job.APIDeploymentGone, 0)
	default:
		ae = fail(kInternal, job.APIInternal)
	}
	row := errTable[ae.kind]
	body := errorBody{Class: row.class, Message: ae.message, ErrorCode: row.errorCode, Details: details}
	if row.errorCode != "" {
		body.HTTPCode = strconv.Itoa(row.status) + " " + http.StatusText(row.status)
	}
	return row.status, body, ae.kind == kInternal
}
