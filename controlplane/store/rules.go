package store

import (
	"time"

	"github.com/byoi/byoi/job"
)

// The state machine of a deployment, as plain functions: every backend
// reads a deployment's row, asks these what changes, and writes that back
// under its own lock (the single writer in SQLite, row locks in
// PostgreSQL). No SQL here, and no backend decides a rule itself.

// Progress is the part of a deployment's row the agent's reports move.
type Progress struct {
	Status     string
	Attempt    int
	LastSeq    int64 // last stored seq of the current attempt
	Step       job.Step
	BytesDone  int64
	BytesTotal int64
	EventTime  time.Time // the agent's time of the last stored event
	HistoryN   int64     // last history position
	Message    string
}

// End is how a final event ends a deployment: its status, code and
// message, and the server's boot afterwards (0: unchanged).
type End struct {
	Status  string
	Code    job.Code
	Message string
	BootID  int64
}

// Applied is what one event batch changes.
type Applied struct {
	Ack Ack
	// New are the events to store, with N, Attempt, Source, Received and
	// Rate set, in order.
	New []Entry
	// Seen: the agent was heard (LastSeen moves to the batch's time).
	Seen bool
	// Progress is the deployment's row afterwards (when New is not empty).
	Progress Progress
	// End is set when the batch's final event ended the deployment.
	End *End
}

// ApplyBatch is AppendEvents' rule: a batch of the current attempt stores
// the events it has not stored yet (seq above LastSeq: a retry is not an
// error), moves the progress on, and a final event ends the deployment.
// A batch without new events is a heartbeat. A repeat of the batch that
// ended the deployment (its answer was lost) is acknowledged again; any
// other batch of an ended deployment gets ErrGone, one of another attempt
// *StaleAttemptError. p is not changed.
func ApplyBatch(p Progress, a Append) (Applied, error) {
	var out Applied
	if p.Status != StatusDoing {
		if (p.Status == StatusDone || p.Status == StatusError) && a.Attempt == p.Attempt && len(a.Events) > 0 && a.Events[len(a.Events)-1].Seq <= p.LastSeq {
			out.Ack = Ack{Seq: p.LastSeq, Done: true}
			return out, nil
		}
		return out, ErrGone
	}
	if a.Attempt != p.Attempt {
		return out, &StaleAttemptError{Got: a.Attempt, Current: p.Attempt}
	}
	var last *job.Event
	for i := range a.Events {
		e := a.Events[i]
		if e.Seq <= p.LastSeq {
			continue // already stored: a retry
		}
		rate := Rate(p.Step, p.BytesDone, p.EventTime, e)
		p.HistoryN++
		out.New = append(out.New, Entry{N: p.HistoryN, Attempt: p.Attempt, Source: SourceAgent, Received: a.Now, Rate: rate, Event: e})
		p.LastSeq = e.Seq
		p.Step, p.BytesDone, p.EventTime = e.Step, e.BytesDone, e.Time
		last = &a.Events[i]
	}
	out.Seen = true
	out.Ack.Seq = p.LastSeq
	if last == nil {
		return out, nil
	}
	p.BytesTotal = last.BytesTotal
	p.Message = job.ProgressMessage(*last)
	if last.Final() {
		out.Ack.Done = true
		out.End = FinalEnd(*last)
		p.Status = out.End.Status
	}
	out.Progress = p
	return out, nil
}

// FinalEnd is how final event e ends its deployment: done boots the
// deployed disk next; an error leaves the server in rescue, its agent
// waiting for the next job.
func FinalEnd(e job.Event) *End {
	if e.Status == job.StatusDone {
		return &End{Status: StatusDone, Code: e.Code, Message: job.ProgressMessage(e), BootID: BootHarddisk}
	}
	return &End{Status: StatusError, Code: e.Code, Message: e.Message}
}

// Opened is what opening an attempt changes.
type Opened struct {
	Attempt int
	// Restarted is the history entry of an attempt after the first (nil
	// for the first).
	Restarted *job.Event
	// Message is the deployment's customer message afterwards.
	Message string
	// Exhausted, when set, is the entry that fails the deployment
	// instead: it had its cap of attempts (no attempt is opened).
	Exhausted *job.Event
}

// OpenAttemptRule is OpenAttempt's rule for a deployment with status and
// attempts opened so far, capped at max (0: no cap): the next attempt,
// recorded in the history from the second on; ErrGone when the
// deployment has ended; Exhausted when one more would pass the cap.
func OpenAttemptRule(status string, attempt, max int, now time.Time) (Opened, error) {
	if status != StatusDoing {
		return Opened{}, ErrGone
	}
	if max > 0 && attempt >= max {
		e := ExhaustedEntry(max, now)
		return Opened{Attempt: attempt, Exhausted: &e, Message: e.Message}, nil
	}
	o := Opened{Attempt: attempt + 1, Message: job.Text(job.MsgStarting)}
	if o.Attempt > 1 {
		e := RestartedEntry(o.Attempt, now)
		o.Restarted, o.Message = &e, e.Message
	}
	return o, nil
}

// Boot tokens. A rescue script is the only way a server's rescue gets an
// agent token from the network, in clear HTTP and without any
// authentication (iPXE cannot sign): so a token is handed out once, when
// byoi-api expects the server to boot its rescue, and never while the
// agent holding the current one is alive.

// TokenExpired reports whether sv's agent token no longer works at now:
// a TokenByNetboot token ends grace after its deployment ended done (the
// agent posts its boot info just after, then reboots to its disk). An
// operator's token (TokenByOperator) never expires.
func TokenExpired(sv Server, now time.Time, grace time.Duration) bool {
	return sv.TokenSource == TokenByNetboot && !sv.TokenDoneAt.IsZero() && !now.Before(sv.TokenDoneAt.Add(grace))
}

// LastHeard is when sv's agent last gave a sign of life: a request
// outside events (AgentSeen), the running deployment's last event
// (deploymentSeen), or the mint of its TokenByNetboot token (its rescue
// is booting).
func LastHeard(sv Server, deploymentSeen time.Time) time.Time {
	t := sv.AgentSeen
	if deploymentSeen.After(t) {
		t = deploymentSeen
	}
	if sv.TokenSource == TokenByNetboot && sv.TokenAt.After(t) {
		t = sv.TokenAt
	}
	return t
}

// AgentLive reports whether sv's agent is alive at now: its token works
// and it was heard within silence.
func AgentLive(sv Server, deploymentSeen, now time.Time, silence, grace time.Duration) bool {
	return sv.HasToken && !TokenExpired(sv, now, grace) && now.Sub(LastHeard(sv, deploymentSeen)) < silence
}

// MayMint is the rule of a rescue script: does it mint a new agent token
// for sv (replacing the current one)?
//
//   - byoi-api rebooted the server (ArmedReboot): yes, whatever its agent
//     said before;
//   - its agent is live: no. A fetch never takes the token of an agent
//     that is heartbeating (the script anyone can fetch would otherwise
//     kill a running deployment);
//   - a customer asked for rescue (ArmedRescue): yes;
//   - it has a token whose agent went silent for silence (3x the
//     heartbeat interval): yes, a rescue that crashed or was power-cycled
//     by hand needs a new one;
//   - otherwise no: the script has no token, and the rescue says why.
func MayMint(sv Server, deploymentSeen, now time.Time, silence, grace time.Duration) bool {
	switch {
	case sv.Armed == ArmedReboot:
		return true
	case AgentLive(sv, deploymentSeen, now, silence, grace):
		return false
	case sv.Armed == ArmedRescue:
		return true
	}
	return sv.HasToken && !TokenExpired(sv, now, grace)
}
