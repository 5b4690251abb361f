package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/imaging/fetch"
)

// Client talks to the control plane's agent API (agentapi) for one server.
// Its errors never hold the token.
type Client struct {
	base   string // the control plane's root URL, without a trailing slash
	server string
	token  string
	hc     *http.Client
}

// ClientOptions configure NewClient.
type ClientOptions struct {
	// CACertPEM holds extra roots for an https control plane.
	CACertPEM []byte
	// Timeout bounds one request (default 30 s).
	Timeout time.Duration
}

// Errors of the agent API that change what the agent does.
var (
	// ErrGone: the deployment was deleted or has ended; stop working on it.
	ErrGone = errors.New("the deployment is gone (deleted or ended)")
	// ErrStale: a newer attempt of the deployment exists (another agent
	// process took over); stop.
	ErrStale = errors.New("a newer attempt of the deployment exists")
	// ErrUnauthorized: the token is refused; retrying will not help until
	// the server gets a new token.
	ErrUnauthorized = errors.New("the control plane refused the agent token")
)

// NewClient returns a client of the agent API at base (e.g.
// "http://10.0.2.2:8080", the root byoi-api listens on) for server.
func NewClient(base, server, token string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("the control plane URL must be an http:// or https:// URL")
	}
	if server == "" || strings.ContainsAny(server, "/?#% ") {
		return nil, fmt.Errorf("server name %q is not valid", server)
	}
	if token == "" {
		return nil, errors.New("no agent token")
	}
	tr, err := fetch.NewTransport(opts.CACertPEM, 30*time.Second)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	hc := &http.Client{Transport: tr, Timeout: opts.Timeout,
		// The agent API never redirects; following one could send the
		// token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &Client{base: strings.TrimRight(u.String(), "/"), server: server, token: token, hc: hc}, nil
}

// Server is the server name the client speaks for.
func (c *Client) Server() string { return c.server }

// apiError is an answer outside 2xx.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string {
	if e.code == http.StatusUnauthorized || e.code == http.StatusForbidden {
		return "control plane: HTTP " + fetch.StatusText(e.code) + ": the control plane refused the agent token (a server that re-entered rescue may need a fresh one: byoi-api server token NAME)"
	}
	if e.msg != "" {
		return fmt.Sprintf("control plane: HTTP %s: %s", fetch.StatusText(e.code), e.msg)
	}
	return "control plane: HTTP " + fetch.StatusText(e.code)
}

func (e *apiError) Is(target error) bool {
	switch target {
	case ErrGone:
		return e.code == http.StatusGone
	case ErrStale:
		return e.code == http.StatusConflict
	case ErrUnauthorized:
		return e.code == http.StatusUnauthorized || e.code == http.StatusForbidden
	}
	return false
}

// Retryable reports whether another try may succeed: transport errors and
// 5xx/429 answers.
func Retryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code >= 500 || ae.code == http.StatusTooManyRequests || ae.code == http.StatusRequestTimeout
	}
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// do sends one request and decodes a JSON answer into out (when not nil).
// It returns the answer's status and headers.
func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, nil, fmt.Errorf("control plane request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "byoi-agent")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text quotes the URL; the URL holds no secret, but keep errors short
		}
		return 0, nil, fmt.Errorf("control plane unreachable: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("control plane answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e agentapi.Error
		_ = json.Unmarshal(raw, &e)
		msg := e.Message
		if len(msg) > 300 {
			msg = msg[:300]
		}
		return resp.StatusCode, resp.Header, &apiError{code: resp.StatusCode, msg: msg}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, resp.Header, fmt.Errorf("control plane answer is not the expected JSON: %w", err)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

// PostInventory tells the control plane how the server booted and its
// disk groups.
func (c *Client) PostInventory(ctx context.Context, inv agentapi.Inventory) error {
	_, _, err := c.do(ctx, http.MethodPost, agentapi.InventoryPath(c.server), inv, nil)
	return err
}

// Job asks for the server's job: the assignment, or nil with how long to
// wait before asking again when there is nothing to do.
func (c *Client) Job(ctx context.Context) (*agentapi.Assignment, time.Duration, error) {
	var a agentapi.Assignment
	code, h, err := c.do(ctx, http.MethodGet, agentapi.JobPath(c.server), nil, &a)
	if err != nil {
		return nil, 0, err
	}
	if code == http.StatusNoContent {
		wait := 10 * time.Second
		if n, err := strconv.Atoi(h.Get("Retry-After")); err == nil && n > 0 && n < 3600 {
			wait = time.Duration(n) * time.Second
		}
		return nil, wait, nil
	}
	if a.DeploymentID < 1 || len(a.Job) == 0 {
		return nil, 0, errors.New("control plane sent an assignment without a deployment or a job")
	}
	return &a, 0, nil
}

// OpenAttempt starts a new attempt of the deployment and returns its
// number (1 the first time; more after an agent restart).
func (c *Client) OpenAttempt(ctx context.Context, deployment int64) (int, error) {
	var a agentapi.Attempt
	if _, _, err := c.do(ctx, http.MethodPost, agentapi.AttemptsPath(c.server, deployment), nil, &a); err != nil {
		return 0, err
	}
	if a.Attempt < 1 {
		return 0, errors.New("control plane answered an attempt number below 1")
	}
	return a.Attempt, nil
}

// PostEvents sends a batch (no events: a heartbeat) and returns the
// acknowledgement.
func (c *Client) PostEvents(ctx context.Context, deployment int64, b agentapi.EventBatch) (agentapi.Ack, error) {
	var ack agentapi.Ack
	_, _, err := c.do(ctx, http.MethodPost, agentapi.EventsPath(c.server, deployment), b, &ack)
	return ack, err
}

// PostBoot tells the control plane how the server boots the deployed disk.
func (c *Client) PostBoot(ctx context.Context, b agentapi.BootInfo) error {
	_, _, err := c.do(ctx, http.MethodPost, agentapi.BootPath(c.server), b, nil)
	return err
}
