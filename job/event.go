package job

import (
	"fmt"
	"time"
)

// Status is a deployment's or a step's state as OVH's API shows it.
type Status string

// Status values (OVH's bringYourOwnImage status).
const (
	StatusDoing Status = "doing"
	StatusDone  Status = "done"
	StatusError Status = "error"
)

// Step names one stage of a deployment. Each stage has its own name, sent
// once when it starts and with its progress.
type Step string

// The steps of a deployment, in order. Not every deployment runs every
// step: raw and OVA images download and write in one pass (StepDownload),
// then verify and write the held-back partition tables (StepWrite); a qcow2
// is downloaded (staged), verified, then written (converted).
const (
	StepPreflight   Step = "preflight"   // the job and the disk are checked
	StepDownload    Step = "download"    // the image is downloaded (raw, ova: and written as it arrives)
	StepVerify      Step = "verify"      // the checksum (and image checks) pass
	StepWrite       Step = "write"       // the image is written (qcow2: converted; raw: the partition tables held back)
	StepRelocate    Step = "relocate"    // the backup GPT moves to the end of the disk
	StepBootCheck   Step = "bootcheck"   // how the disk boots is checked
	StepConfigDrive Step = "configdrive" // the config-2 ConfigDrive is written
	StepFinish      Step = "finish"      // flushed, table re-read, final status
)

// Steps lists the steps in the order they run, for install/status.
var Steps = []Step{StepPreflight, StepDownload, StepVerify, StepWrite, StepRelocate, StepBootCheck, StepConfigDrive, StepFinish}

// StepComment is the step's description in install/status (OVH shows
// sentences such as "Downloading OS image").
func StepComment(s Step) string {
	switch s {
	case StepPreflight:
		return "Checking the job and the disk"
	case StepDownload:
		return "Downloading the image"
	case StepVerify:
		return "Verifying the image"
	case StepWrite:
		return "Writing the image to disk"
	case StepRelocate:
		return "Moving the backup GPT to the end of the disk"
	case StepBootCheck:
		return "Checking how the image boots"
	case StepConfigDrive:
		return "Creating the ConfigDrive"
	case StepFinish:
		return "Flushing the disk"
	}
	return string(s)
}

// Kind says what an event is about.
type Kind string

// Event kinds.
const (
	KindInfo     Kind = "info"     // a step starts, or a final status
	KindProgress Kind = "progress" // bytes done of bytes total within a step
	KindWarning  Kind = "warning"  // something the operator should know; the deployment goes on
)

// Event is one status report of a deployment: what `byoi deploy --json`
// prints, one per line, and what the agent posts to the control plane.
// Message never holds a secret (header values, user data, URL queries).
type Event struct {
	// Seq numbers the events of one deployment attempt from 1, in order.
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	// Status is doing until the final event, done or error.
	Status Status `json:"status"`
	Step   Step   `json:"step"`
	Kind   Kind   `json:"kind"`
	// Code is the catalog code of Message (errors, warnings, steps).
	Code       Code   `json:"code,omitempty"`
	Message    string `json:"message"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
}

// Final reports whether the event ends the deployment.
func (e Event) Final() bool { return e.Status == StatusDone || e.Status == StatusError }

// Validate checks an event received from outside (the agent API): known
// status, step and kind, sane byte counts, a bounded message.
func (e Event) Validate() error {
	switch e.Status {
	case StatusDoing, StatusDone, StatusError:
	default:
		return fmt.Errorf("event status %q is not doing, done or error", truncate(string(e.Status), 32))
	}
	known := false
	for _, s := range Steps {
		if e.Step == s {
			known = true
		}
	}
	if !known {
		return fmt.Errorf("event step %q is unknown", truncate(string(e.Step), 32))
	}
	switch e.Kind {
	case KindInfo, KindProgress, KindWarning:
	default:
		return fmt.Errorf("event kind %q is not info, progress or warning", truncate(string(e.Kind), 32))
	}
	if e.Code != "" {
		if _, ok := catalog[e.Code]; !ok {
			return fmt.Errorf("event code %q is unknown", truncate(string(e.Code), 32))
		}
	}
	if len(e.Message) > MaxEventMessage {
		return fmt.Errorf("event message is %d bytes, more than %d", len(e.Message), MaxEventMessage)
	}
	if e.Seq < 0 || e.BytesDone < 0 || e.BytesTotal < -1 {
		return fmt.Errorf("event seq and byte counts must not be negative")
	}
	return nil
}

// MaxEventMessage bounds an event's message.
const MaxEventMessage = 4 << 10

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// HumanBytes renders a byte count as "1.2 GiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ProgressMessage is the customer-facing message for the latest event of a
// running deployment: "downloading 1.2 GiB of 3.4 GiB", "verifying",
// "writing 40%", "configuring", "done", or the event's own message for
// errors and warnings.
func ProgressMessage(e Event) string {
	switch {
	case e.Status == StatusError:
		return e.Message
	case e.Status == StatusDone:
		return Text(MsgDone)
	}
	switch e.Step {
	case StepPreflight:
		return Text(MsgStarting)
	case StepDownload:
		if e.BytesTotal > 0 {
			return Text(MsgDownloading, HumanBytes(e.BytesDone), HumanBytes(e.BytesTotal))
		}
		if e.BytesDone > 0 {
			return Text(MsgDownloadingN, HumanBytes(e.BytesDone))
		}
		return Text(MsgDownloadingN, HumanBytes(0))
	case StepVerify:
		return Text(MsgVerifying)
	case StepWrite:
		if e.BytesTotal > 0 {
			return Text(MsgWriting, min(100, e.BytesDone*100/e.BytesTotal))
		}
		return Text(MsgWritingStart)
	case StepRelocate, StepBootCheck, StepConfigDrive, StepFinish:
		return Text(MsgConfiguring)
	}
	return e.Message
}
