package agent

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/internal/logtail"
	"github.com/byoi/byoi/job"
)

// Log tails of a failed deployment (issue 25): the end of the kernel log
// and of the agent's own log, redacted of the job's secrets, the agent
// token and the phone-home URL (and, by logtail's built-in patterns, of
// byoi.token= on the kernel command line and Authorization headers),
// posted to the control plane, which shows them to the operator and the
// customer.

// KernelLogFunc reads the kernel log's tail (logtail.Kernel).
type KernelLogFunc func(ctx context.Context, o logtail.Options) (logtail.Tail, error)

// PostLogs posts a failed deployment's log tails.
func (c *Client) PostLogs(ctx context.Context, deployment int64, l agentapi.LogTails) error {
	_, _, err := c.do(ctx, http.MethodPost, agentapi.LogsPath(c.server, deployment), l, nil)
	return err
}

// jobSecrets are the values a log tail must not hold.
func jobSecrets(j *job.Job, extra ...string) []string {
	out := append([]string{}, extra...)
	if j != nil {
		for _, h := range j.Headers {
			out = append(out, h.Value)
		}
		if j.ConfigDrive != nil && len(j.ConfigDrive.UserData) > 0 {
			out = append(out, string(j.ConfigDrive.UserData))
		}
	}
	return out
}

// uploadLogs takes and posts the tails after deployment a failed; its
// own failures are only logged (the final status is already delivered).
func uploadLogs(ctx context.Context, cfg AgentConfig, log *slog.Logger, deployment int64, attempt int, secrets []string) {
	half := agentapi.MaxLogText / 2
	opts := logtail.Options{MaxBytes: half, Secrets: secrets}
	read := cfg.KernelLog
	if read == nil {
		read = logtail.Kernel
	}
	var l agentapi.LogTails
	l.Attempt = attempt
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if k, err := read(kctx, opts); err != nil {
		log.Warn("could not read the kernel log", "error", err.Error())
	} else {
		l.Kernel = k.Text
	}
	if cfg.LogTail != nil {
		l.Agent = cfg.LogTail.Tail(opts).Text
	}
	if l.Kernel == "" && l.Agent == "" {
		return
	}
	if err := cfg.Client.PostLogs(kctx, deployment, l); err != nil {
		log.Warn("could not post the log tails", "error", err.Error())
		return
	}
	log.Info("log tails posted", "kernel_bytes", len(l.Kernel), "agent_bytes", len(l.Agent))
}
