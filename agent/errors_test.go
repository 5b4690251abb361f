package agent

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// TestErrorTable: each library error reads to the customer as the catalog
// says, word for word (OVH's texts where OVH has them), through the one
// table (catalogOf) and Describe; a cause follows in its own catalog text
// when it has one; the outermost coded error of a chain wins.
func TestErrorTable(t *testing.T) {
	eio := errors.New("input/output error")
	q2 := &qcow2.Error{Reason: "corrupt data at guest offset 0", Err: errors.New("flate: corrupt input")}
	for _, c := range []struct {
		err  error
		code job.Code
		msg  string
	}{
		{&fetch.Error{URL: "http://h/img", Err: &fetch.StatusError{Code: 404, Status: "404 Not Found"}}, job.DownloadFailed,
			"Could not download image located : http://h/img. HTTP 404 Not Found"},
		{&imaging.FormatError{Declared: "raw", Found: imaging.FormatGzip, NoTable: true}, job.NoPartitionTable,
			"image provided format is not of type raw because no partition table was found. It seems to contain: gzip"},
		{&imaging.FormatError{Declared: "raw", Found: imaging.FormatEmpty, NoTable: true}, job.NoPartitionTable,
			"image provided format is not of type raw because no partition table was found. It seems to contain: only zeros"},
		{&imaging.FormatError{Declared: "raw", Found: imaging.FormatUnknown, NoTable: true}, job.NoPartitionTable,
			"image provided format is not of type raw because no partition table was found. It seems to contain: unknown data"},
		{&imaging.FormatError{Declared: "raw", Found: imaging.FormatQcow2}, job.FormatMismatch,
			"image provided format is qcow2 which does not match expected raw format"},
		{&imaging.FormatError{Declared: "qcow2", Found: imaging.FormatRaw}, job.FormatMismatch,
			"image provided format is raw which does not match expected qcow2 format"},
		{&imaging.FormatError{Declared: "qcow2", Found: imaging.FormatGzip}, job.FormatMismatch,
			"image provided format is gzip which does not match expected qcow2 format"},
		{&imaging.SizeError{ImageSize: 3000, TargetName: "/dev/sda", TargetSize: 2000}, job.ImageTooLarge,
			"image provided has a size of 3000 bytes which is larger than /dev/sda of 2000 bytes"},
		{&imaging.SizeError{ImageSize: 3000, TargetSize: 2000}, job.ImageTooLarge,
			"image provided has a size of 3000 bytes which is larger than the target disk of 2000 bytes"},
		{&imaging.WriteError{Format: "qcow2", Err: eio}, job.WriteFailed, "Can't write qcow2 on disk. input/output error"},
		{&imaging.WriteError{Format: "qcow2", Err: q2}, job.WriteFailed,
			"Can't write qcow2 on disk. qcow2 image refused: corrupt data at guest offset 0: flate: corrupt input"},
		{&imaging.ChecksumError{Type: "sha256", Got: "ab", Want: "cd"}, job.ChecksumMismatch,
			"Bad sha256 for downloaded file, got : ab while expecting cd."},
		{imaging.ErrChecksumType, job.BadChecksumType, "Bad checkSumType, expected : sha1, sha256, md5, sha512."},
		{&qcow2.TooBigError{Size: 3 << 20}, job.Qcow2TooBig, "Could not download, qcow2 image is too big to download in memory."},
		{q2, job.Qcow2Refused, "qcow2 image refused: corrupt data at guest offset 0: flate: corrupt input"},
		{&vmdk.Error{Reason: "needs seeking backwards"}, job.ImageRefused, "VMDK image refused: needs seeking backwards"},
		{&ova.Error{Member: "disk1.vmdk", Reason: "member is 5 bytes"}, job.ImageRefused, `OVA image refused: "disk1.vmdk": member is 5 bytes`},
		{&decompress.Error{Format: imaging.FormatXz, Reason: "truncated", Err: io.ErrUnexpectedEOF}, job.ImageRefused,
			"xz image refused: truncated: unexpected EOF"},
		{&ova.ManifestError{Member: "vm.ovf", Algo: "SHA1", Got: "ab", Want: "cd"}, job.ManifestMismatch,
			"Bad sha1 for vm.ovf in the OVA manifest, got : ab while expecting cd."},
		{&ova.ManifestError{Member: "gone.vmdk", Reason: "not in the archive"}, job.ManifestRefused,
			`OVA manifest refused: "gone.vmdk": not in the archive`},
		{&ova.ManifestError{Reason: "unknown algorithm MD4"}, job.ManifestRefused, "OVA manifest refused: unknown algorithm MD4"},
		{&partition.SectorSizeError{ImageSectorSize: 4096, DiskSectorSize: 512}, job.SectorSizeMismatch,
			"image sector size 4096 does not match disk sector size 512"},
		{&partition.RelocateError{Err: errors.New("no good backup GPT")}, job.GPTRelocateFailed,
			"Can not move backup GPT data structures to the end of disk. no good backup GPT"},
		{&partition.TableError{Table: "mbr", Reason: "hidden GPT"}, job.TableRefused, "image partition table refused: hidden GPT"},
		{fmt.Errorf("/dev/sda: %w: %w", blockdev.ErrRereadDeferred, eio), job.WarnRereadDeferred,
			"partition table written, kernel re-read deferred: reboot applies it"},
		// The outermost coded error wins; job's own errors keep theirs.
		{fmt.Errorf("stage: %w", &imaging.WriteError{Format: "raw", Err: &partition.TableError{Reason: "x"}}), job.WriteFailed,
			"Can't write raw on disk. image partition table refused: x"},
		{job.Wrap(&imaging.SizeError{ImageSize: 2, TargetSize: 1}, job.ConfigDriveFailed), job.ConfigDriveFailed,
			"Could not create configdrive on disk. image of 2 bytes does not fit the target disk (1 bytes)"},
		{errors.Join(&stepError{job.StepWrite, q2}, eio), job.Qcow2Refused, "qcow2 image refused: corrupt data at guest offset 0: flate: corrupt input"},
		{errors.New("read the partition table: EOF"), job.Internal, "read the partition table: EOF"},
	} {
		code, msg := Describe(c.err)
		if code != c.code || msg != c.msg {
			t.Errorf("Describe(%T %v) = %s %q, want %s %q", c.err, c.err, code, msg, c.code, c.msg)
		}
		// A step's error reads the same through job.Describe: the tracker's
		// stepError is the customer's text.
		se := &stepError{job.StepDownload, c.err}
		if code, msg := job.Describe(se); code != c.code || msg != c.msg || se.Error() != c.msg {
			t.Errorf("job.Describe(stepError(%v)) = %s %q", c.err, code, msg)
		}
	}
}

// TestDescribeInterrupted: a cancelled deployment is said to be
// interrupted, with its step, even when the step's own error has a code
// (a download cut by the cancellation is a *fetch.Error).
func TestDescribeInterrupted(t *testing.T) {
	cut := &fetch.Error{URL: "http://h/img", Err: fmt.Errorf("read body: %w", context.Canceled)}
	for _, err := range []error{
		&stepError{job.StepDownload, cut},
		fmt.Errorf("x: %w", &stepError{job.StepDownload, context.Canceled}),
		errors.Join(&stepError{job.StepDownload, job.Wrap(context.Canceled, job.ConfigDriveFailed)}, errors.New("wipe")),
	} {
		want := "the deployment was interrupted during its download step"
		if code, msg := Describe(err); code != job.InterruptedStep || msg != want {
			t.Errorf("Describe(%v) = %s %q, want InterruptedStep %q", err, code, msg, want)
		}
		if code, msg := job.Describe(err); code != job.InterruptedStep || msg != want {
			t.Errorf("job.Describe(%v) = %s %q", err, code, msg)
		}
	}
	if code, msg := Describe(cut); code != job.Interrupted || msg != "interrupted" {
		t.Errorf("no step: %s %q", code, msg)
	}
	if code, _ := Describe(&stepError{job.StepDownload, fmt.Errorf("x: %w", context.DeadlineExceeded)}); code != job.Internal {
		t.Errorf("a deadline is not an interruption: %s", code)
	}
}

// TestLibrariesHaveNoCatalogCodes: the libraries return typed errors; the
// catalog's codes and texts are the agent's to give (this file's table).
// A library naming a job.Code, job.Text, job.Errorf or job.Wrap (or any job
// identifier but the job spec's types it works with) fails.
func TestLibrariesHaveNoCatalogCodes(t *testing.T) {
	allowed := map[string]bool{"Header": true, "RedactURL": true, "ValidHeaderName": true, "ValidHeaderValue": true}
	var dirs []string
	for _, root := range []string{"../imaging", "../partition", "../blockdev", "../configdrive", "../efiboot", "../drivers"} {
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && d.Name() != "testdata" {
				dirs = append(dirs, p)
			}
			return err
		})
	}
	files := 0
	for _, dir := range dirs {
		m, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range m {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			files++
			fs := token.NewFileSet()
			af, err := parser.ParseFile(fs, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(af, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && id.Name == "job" && !allowed[sel.Sel.Name] {
						t.Errorf("%s: job.%s: a library returns typed errors, the agent maps them to the catalog", fs.Position(sel.Pos()), sel.Sel.Name)
					}
				}
				if fd, ok := n.(*ast.FuncDecl); ok && fd.Name.Name == "MessageCode" {
					t.Errorf("%s: a MessageCode method: the catalog code belongs in agent's table", fs.Position(fd.Pos()))
				}
				return true
			})
		}
	}
	if files < 40 {
		t.Fatalf("only %d library files parsed", files)
	}
}
