package agent

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/job"
)

// The image checks (issue 26): the image's own system is read and checked
// against the server before the server is erased.
//
//   - raw and OVA images stream onto the disk: their first MiB is checked
//     before anything is written (imagecheck.CheckHead: the boot mode
//     against the partition table and the MBR's boot code; a refusal stops
//     the deployment with the disk untouched); their filesystems are
//     checked once the image is written and before the commit, and those
//     findings are warnings in the final status (refusals too: the old
//     system is gone by then; a strict job refuses, and the disk is left
//     without a partition table).
//   - a qcow2 image is staged whole before writing: every check runs on its
//     virtual disk before the conversion, and a refusal stops the
//     deployment before the image region is touched.
//
// A job with imageChecks "strict" refuses on warnings too; "off" skips the
// checks. Notes (what was not examined) go to the log only.

// CheckError is a deployment refused by the image checks. It is the
// customer's text (job.Coded): the first refusal's code and text, the
// others' texts after it.
type CheckError struct {
	Findings []imagecheck.Finding
	// Strict: the findings are warnings that refuse because the job is
	// strict.
	Strict bool
}

func (e *CheckError) first() (job.Code, string) {
	f := e.Findings[0]
	code, msg := f.Code, f.Message
	if e.Strict {
		code, msg = job.CheckStrict, job.Text(job.CheckStrict, msg)
	}
	return code, msg
}

// MessageCode is the first finding's code (CheckStrict for a strict job's
// warning).
func (e *CheckError) MessageCode() job.Code { c, _ := e.first(); return c }

func (e *CheckError) Error() string {
	_, msg := e.first()
	if len(e.Findings) == 1 {
		return msg
	}
	rest := make([]string, 0, len(e.Findings)-1)
	for _, f := range e.Findings[1:] {
		rest = append(rest, f.Message)
	}
	return job.Text(job.CheckMore, msg, len(rest), strings.Join(rest, "; "))
}

// checking tells whether the job's image is checked.
func (dp *deployment) checking() bool { return dp.job.ImageChecks != job.ImageChecksOff }

func (dp *deployment) strict() bool { return dp.job.ImageChecks == job.ImageChecksStrict }

// facts are the server's facts for this deployment: the inventory's for
// the target disk (Options.Inventory), then the ones given (Options.Facts)
// over them, then the job's.
func (dp *deployment) facts() imagecheck.Facts {
	f := imagecheck.InventoryFacts(dp.Inventory, dp.real.Path(), dp.job.DiskGroupID)
	if dp.Inventory != nil && len(f.DiskDrivers) == 0 {
		// The target named by its path: the inventory knows it by name.
		f2 := imagecheck.InventoryFacts(dp.Inventory, "", dp.job.DiskGroupID)
		f.DiskDrivers = f2.DiskDrivers
	}
	if g := dp.Facts; g != nil {
		if g.BootMode != "" {
			f.BootMode = g.BootMode
		}
		if len(g.DiskDrivers) > 0 {
			f.DiskDrivers = g.DiskDrivers
		}
		if len(g.NICs) > 0 {
			f.NICs = g.NICs
		}
	}
	f.ConfigDrive = dp.job.ConfigDrive != nil
	f.EFIBootloaderPath = dp.job.EFIBootloaderPath
	return f
}

// checkHead checks a streamed image's first MiB before anything is
// written: its refusals (and, for a strict job, its warnings) stop the
// deployment; its warnings are reported.
func (dp *deployment) checkHead(head []byte) error {
	if !dp.checking() {
		return nil
	}
	fs, err := imagecheck.CheckHead(head, dp.real.SectorSize(), dp.facts())
	if err != nil {
		// The table's own checks (examineHead) decide on a bad table.
		dp.log.Info("image checks: the head could not be checked", logAttrsErr(err))
		return nil
	}
	return dp.findings(job.StepDownload, fs, false)
}

// checkDisk runs every check on the disk the image becomes (the staged
// qcow2's virtual disk before it is written, or the written disk before
// the commit: written true).
func (dp *deployment) checkDisk(ctx context.Context, step job.Step, disk io.ReaderAt, size int64, written bool) error {
	if !dp.checking() {
		return nil
	}
	rep, err := imagecheck.Check(ctx, disk, size, dp.real.SectorSize(), dp.facts(), imagecheck.Options{})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		dp.log.Info("image checks could not run", logAttrsErr(err))
		return nil
	}
	dp.res.Check = rep
	dp.log.Info("image checks", "findings", len(rep.Findings), "refusals", len(rep.Refusals()), "warnings", len(rep.Warnings()),
		"reads", rep.Reads, "bytesRead", rep.BytesRead, "elapsed", rep.Duration)
	return dp.findings(step, rep.Findings, written)
}

// findings acts on findings: refusals refuse (written: warn, the old
// system being gone, unless the job is strict), warnings warn (strict:
// refuse), notes are logged. A finding already reported (the head's, seen
// again in the whole disk's) is not reported twice.
func (dp *deployment) findings(step job.Step, fs []imagecheck.Finding, written bool) error {
	var refuse, warn []imagecheck.Finding
	for _, f := range fs {
		key := fmt.Sprintf("%s\x00%s\x00%d\x00%s", f.Code, f.File, f.Line, f.Message)
		if dp.seen[key] {
			continue
		}
		if dp.seen == nil {
			dp.seen = map[string]bool{}
		}
		dp.seen[key] = true
		switch f.Severity {
		case imagecheck.Refuse:
			if written && !dp.strict() {
				warn = append(warn, f)
			} else {
				refuse = append(refuse, f)
			}
		case imagecheck.Warn:
			warn = append(warn, f)
		default:
			dp.log.Info("image check note", "code", f.Code, "file", f.File, "msg", f.Message)
		}
	}
	if len(refuse) > 0 {
		return &CheckError{Findings: refuse}
	}
	if len(warn) > 0 && dp.strict() {
		return &CheckError{Findings: warn, Strict: true}
	}
	for _, f := range warn {
		dp.warn(dp.res, step, f.Code, f.Args...)
	}
	return nil
}
