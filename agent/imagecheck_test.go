package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// The image checks in a deployment (issue 26): refusals before the disk is
// touched, warnings as warning events, a strict job, checks turned off.

// noESPImage is a GPT image with a Linux partition only (no EFI System
// Partition), with or without boot code in its MBR.
func noESPImage(t *testing.T, bootCode bool) []byte {
	t.Helper()
	img, err := testimage.GPT(16*mib, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 * mib, Size: 13 * mib, Fill: testimage.FillMixed},
	}, 5)
	if err != nil {
		t.Fatal(err)
	}
	if bootCode {
		copy(img, []byte{0xfa, 0xcd, 0x18}) // cli; int 18h
	}
	return img
}

// checkDeploy deploys data as typ onto a fresh old system with a server of
// boot mode mode and the job's imageChecks; it returns the error, the
// events and whether the disk's bytes changed. Type "qcow2-staged" is a
// qcow2 staged whole (Options.Qcow2Staging), "qcow2" one converted as it
// streams.
func checkDeploy(t *testing.T, data []byte, typ, mode, checks string) (*Result, error, *recorder, bool) {
	t.Helper()
	path := crashcheck.OldSystem(t, 512, 32*mib)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	staged := typ == "qcow2-staged"
	if staged {
		typ = "qcow2"
	}
	j := &job.Job{ImageURL: serve(t, data, ""), ImageType: typ, DiskGroupID: 1, ImageChecks: checks,
		Checksum: sumHex(sha256.New(), data), ChecksumType: "sha256"}
	rec := &recorder{}
	d := rec.deployer()
	d.Qcow2Staging = staged
	d.Inventory = &agentapi.Inventory{BootMode: mode}
	res, err := Run(context.Background(), j, Env{Target: path, Options: d.Options, Report: ReporterFunc(rec.report)})
	after, rerr := os.ReadFile(path)
	if rerr != nil {
		t.Fatal(rerr)
	}
	return res, err, rec, !bytes.Equal(before, after)
}

func (r *recorder) warningCodes() []job.Code {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c []job.Code
	for _, e := range r.events {
		if e.Kind == job.KindWarning {
			c = append(c, e.Code)
		}
	}
	return c
}

func (r *recorder) final() job.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i].Status != "" {
			return r.events[i]
		}
	}
	return job.Event{}
}

// TestCheckRefusesBeforeWriting: a certain boot-mode mismatch is refused
// before anything is written, raw and a streamed qcow2 (the head's check)
// and a staged qcow2 (every check) alike; the disk keeps its old system byte for
// byte, and the final status carries the finding's code and text.
func TestCheckRefusesBeforeWriting(t *testing.T) {
	t.Parallel()
	uefiNoESP := noESPImage(t, true)
	biosNoCode := noESPImage(t, false)
	q1, err := testimage.Qcow2(uefiNoESP, 16)
	if err != nil {
		t.Fatal(err)
	}
	q2, err := testimage.Qcow2(biosNoCode, 16)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, typ, mode string
		img             []byte
		code            job.Code
		step            job.Step
	}{
		{"raw uefi", "raw", agentapi.BootModeUEFI, uefiNoESP, job.CheckUEFINoESP, job.StepDownload},
		{"raw bios", "raw", agentapi.BootModeLegacy, biosNoCode, job.CheckBIOSNoBootCode, job.StepDownload},
		{"qcow2 uefi", "qcow2", agentapi.BootModeUEFI, q1, job.CheckUEFINoESP, job.StepDownload},
		{"qcow2 bios", "qcow2", agentapi.BootModeLegacy, q2, job.CheckBIOSNoBootCode, job.StepDownload},
		{"staged qcow2 uefi", "qcow2-staged", agentapi.BootModeUEFI, q1, job.CheckUEFINoESP, job.StepVerify},
		{"staged qcow2 bios", "qcow2-staged", agentapi.BootModeLegacy, q2, job.CheckBIOSNoBootCode, job.StepVerify},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err, rec, changed := checkDeploy(t, tc.img, tc.typ, tc.mode, "")
			var ce *CheckError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a CheckError", err)
			}
			if changed {
				t.Fatal("the disk was written before the refusal")
			}
			code, msg := Describe(err)
			if code != tc.code || msg != job.Text(tc.code) {
				t.Fatalf("Describe = %s %q, want %s %q", code, msg, tc.code, job.Text(tc.code))
			}
			if f := rec.final(); f.Status != job.StatusError || f.Code != tc.code || f.Step != tc.step {
				t.Fatalf("final event %+v, want error %s at %s", f, tc.code, tc.step)
			}
			// Off: the same image deploys.
			if _, err, _, _ := checkDeploy(t, tc.img, tc.typ, tc.mode, job.ImageChecksOff); err != nil {
				t.Fatalf("imageChecks off: %v", err)
			}
		})
	}
}

// TestCheckWarningsAndStrict: a warning (BIOS server, MBR boot code but no
// BIOS boot partition on a GPT disk) is a warning event of a deployment
// that succeeds, once (the head's and the whole disk's check see it both);
// a strict job refuses it before writing, with CheckStrict.
func TestCheckWarningsAndStrict(t *testing.T) {
	t.Parallel()
	img := noESPImage(t, true)
	res, err, rec, _ := checkDeploy(t, img, "raw", agentapi.BootModeLegacy, "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range rec.warningCodes() {
		if c == job.CheckBIOSNoCoreSpace {
			n++
		}
		if c == job.WarnNoESP || c == job.WarnNoLegacyBoot {
			t.Errorf("warning %s: the boot mode is known, the boot-agnostic warnings are not for it", c)
		}
	}
	if n != 1 {
		t.Fatalf("CheckBIOSNoCoreSpace warned %d times, want 1 (warnings %v)", n, rec.warningCodes())
	}
	if res.Check == nil || len(res.Check.Warnings()) != 1 {
		t.Fatalf("result's check report %+v", res.Check)
	}
	_, err, rec, changed := checkDeploy(t, img, "raw", agentapi.BootModeLegacy, job.ImageChecksStrict)
	if code, _ := Describe(err); code != job.CheckStrict {
		t.Fatalf("strict: err = %v (%s), want CheckStrict", err, code)
	}
	if !strings.Contains(err.Error(), job.Text(job.CheckBIOSNoCoreSpace)) {
		t.Fatalf("strict: %q does not say the warning", err)
	}
	if changed {
		t.Fatal("strict: the disk was written before the refusal")
	}
	if rec.final().Code != job.CheckStrict {
		t.Fatalf("strict: final event %+v", rec.final())
	}
}

// espNotFAT is a GPT image whose ESP holds no FAT filesystem: a UEFI
// server has nothing to boot. The head's check cannot tell (an ESP is
// there); the whole disk's can.
func espNotFAT(t *testing.T) []byte {
	t.Helper()
	img, err := testimage.GPT(16*mib, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: 9 * mib, Fill: testimage.FillMixed},
	}, 6)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestCheckAfterStreaming: the filesystem checks of a streamed raw image
// run once it is written, before the commit: a refusal there is a warning
// of a deployment that succeeds (the old system is gone by then); a strict
// job refuses it and the disk is left without a partition table. A qcow2,
// checked whole before writing, is refused with its disk untouched.
func TestCheckAfterStreaming(t *testing.T) {
	t.Parallel()
	img := espNotFAT(t)
	_, err, rec, _ := checkDeploy(t, img, "raw", agentapi.BootModeUEFI, "")
	if err != nil {
		t.Fatal(err)
	}
	if w := rec.warningCodes(); len(w) != 1 || w[0] != job.CheckUEFINoLoader {
		t.Fatalf("warnings %v, want [CheckUEFINoLoader] alone", w)
	}

	_, err, _, _ = checkDeploy(t, img, "raw", agentapi.BootModeUEFI, job.ImageChecksStrict)
	var ce *CheckError
	if !errors.As(err, &ce) || ce.Findings[0].Code != job.CheckUEFINoLoader {
		t.Fatalf("strict raw: err = %v", err)
	}
	if FailedStep(err) != job.StepBootCheck {
		t.Fatalf("strict raw failed at %q, want bootcheck", FailedStep(err))
	}

	q, err := testimage.Qcow2(img, 16)
	if err != nil {
		t.Fatal(err)
	}
	// Staged: every check runs before the disk is touched, a refusal
	// refuses.
	_, err, _, changed := checkDeploy(t, q, "qcow2-staged", agentapi.BootModeUEFI, "")
	if code, _ := Describe(err); code != job.CheckUEFINoLoader || changed {
		t.Fatalf("staged qcow2: err = %v (%s), disk changed %v", err, code, changed)
	}
	// Streamed: as raw, the filesystems are checked once written.
	_, err, rec, _ = checkDeploy(t, q, "qcow2", agentapi.BootModeUEFI, "")
	if err != nil {
		t.Fatal(err)
	}
	if w := rec.warningCodes(); len(w) != 1 || w[0] != job.CheckUEFINoLoader {
		t.Fatalf("streamed qcow2: warnings %v, want [CheckUEFINoLoader] alone", w)
	}
}

// TestCheckStrictRawLeavesNoTable: a strict job refused after a streamed
// image was written leaves the disk without a partition table.
func TestCheckStrictRawLeavesNoTable(t *testing.T) {
	t.Parallel()
	img := espNotFAT(t)
	path := crashcheck.OldSystem(t, 512, 32*mib)
	j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1, ImageChecks: job.ImageChecksStrict}
	rec := &recorder{}
	d := rec.deployer()
	d.Inventory = &agentapi.Inventory{BootMode: agentapi.BootModeUEFI}
	if _, err := Run(context.Background(), j, Env{Target: path, Options: d.Options, Report: ReporterFunc(rec.report)}); err == nil {
		t.Fatal("deployed")
	}
	dev := openFile(t, path)
	if _, err := partition.Read(dev); err == nil {
		t.Fatal("a partition table is left on the disk")
	}
}

// TestCheckErrorText: more refusals than one are said after the first.
func TestCheckErrorText(t *testing.T) {
	e := &CheckError{Findings: []imagecheck.Finding{
		{Code: job.CheckUEFINoESP, Severity: imagecheck.Refuse, Message: job.Text(job.CheckUEFINoESP)},
		{Code: job.CheckCloudInitMissing, Severity: imagecheck.Refuse, Message: job.Text(job.CheckCloudInitMissing)},
	}}
	want := job.Text(job.CheckMore, job.Text(job.CheckUEFINoESP), 1, job.Text(job.CheckCloudInitMissing))
	if e.Error() != want || e.MessageCode() != job.CheckUEFINoESP {
		t.Fatalf("%s %q, want %q", e.MessageCode(), e.Error(), want)
	}
}
