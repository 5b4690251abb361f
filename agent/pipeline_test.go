package agent

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/job"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
)

const mib = 1 << 20

// testImage builds a raw GPT image of size bytes with two filled partitions.
func testImage(t testing.TB, size, sectorSize int64) []byte {
	t.Helper()
	end := size - 2*mib
	img, err := testimage.GPT(size, sectorSize, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: end - 5*mib, Fill: testimage.FillMixed},
	}, uint64(size))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// serve serves data at /img on 127.0.0.1 and counts the requests.
func serve(t testing.TB, data []byte, wantHeader string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wantHeader != "" && r.Header.Get("X-Token") != wantHeader {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if r.URL.Path != "/img" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/img"
}

// recorder collects events and log output for secret checks.
type recorder struct {
	mu     sync.Mutex
	events []job.Event
	log    bytes.Buffer
}

func (r *recorder) report(e job.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// run deploys j onto the file or device at path through Run.
func (r *recorder) run(t testing.TB, j *job.Job, path string) (*Result, error) {
	t.Helper()
	d := r.deployer()
	return Run(context.Background(), j, Env{Target: path, Options: d.Options, Report: ReporterFunc(r.report)})
}

func (r *recorder) deployer() *Deployer {
	return &Deployer{
		Options: Options{
			Logger: slog.New(slog.NewTextHandler(&lockedWriter{mu: &r.mu, w: &r.log}, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Fetch:  fetch.Options{ConnectTimeout: 5 * time.Second, StallTimeout: 5 * time.Second, MaxRetries: 1, RetryBase: 10 * time.Millisecond},
		},
		Events: r.report,
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.Write(r.log.Bytes())
	for _, e := range r.events {
		b.WriteString(string(e.Step) + " " + string(e.Status) + " " + e.Message + "\n")
	}
	return b.String()
}

func openFile(t testing.TB, path string) *blockdev.Device {
	t.Helper()
	d, err := blockdev.Open(path, blockdev.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func sumHex(h hash.Hash, b []byte) string {
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// oldSystemDisk makes a sparse target that holds a previous system: a GPT
// at both ends and non-zero data.
func oldSystemDisk(t testing.TB, size int64) string {
	t.Helper()
	old, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "old", Type: testimage.TypeLinux, Start: 1 * mib, Size: size - 3*mib, Fill: testimage.FillMixed},
	}, 99)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployRawAllChecksumsByteIdentical(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	url := serve(t, img, "")
	for _, c := range []struct {
		typ string
		h   hash.Hash
	}{{"md5", md5.New()}, {"sha1", sha1.New()}, {"sha256", sha256.New()}, {"sha512", sha512.New()}} {
		t.Run(c.typ, func(t *testing.T) {
			// A target of exactly the image size: relocation has nothing to
			// move, so the disk must be byte-identical to the image.
			path := oldSystemDisk(t, int64(len(img)))
			rec := &recorder{}
			j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: strings.ToUpper(sumHex(c.h, img)), ChecksumType: c.typ, DiskGroupID: 1}
			res, err := rec.run(t, j, path)
			if err != nil {
				t.Fatalf("deploy: %v", err)
			}
			if res.ImageBytes != int64(len(img)) {
				t.Errorf("ImageBytes %d, want %d", res.ImageBytes, len(img))
			}
			testutil.Run(t, "cmp", path, writeTemp(t, img))
			last := rec.events[len(rec.events)-1]
			if last.Status != job.StatusDone {
				t.Errorf("last event %+v, want done", last)
			}
		})
	}
}

func writeTemp(t testing.TB, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployRawLargerDiskRelocatesGPT(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "cmp")
	img := testImage(t, 24*mib, 512)
	url := serve(t, img, "")
	path := oldSystemDisk(t, 64*mib)
	disk := openFile(t, path)
	h := sha256.New()
	j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: sumHex(h, img), ChecksumType: "sha256", DiskGroupID: 1}
	if _, err := (&recorder{}).deployer().Deploy(context.Background(), j, disk); err != nil {
		t.Fatal(err)
	}
	out := testutil.Run(t, "sgdisk", "-v", path)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v: %s", out)
	}
	// Everything between the primary GPT and the image's old backup GPT is
	// the image, byte for byte.
	src := writeTemp(t, img)
	n := len(img) - 2*mib
	testutil.Run(t, "cmp", "-n", itoa(int64(n)), "-i", itoa(mib), path, src)
	// The old system's data past the image was cleared from the last MiB.
	tail := make([]byte, mib-64*1024)
	if _, err := disk.ReadAt(tail, 63*mib); err != nil {
		t.Fatal(err)
	}
	if bytes.Count(tail, []byte{0}) != len(tail) {
		t.Error("old data remains in the last MiB of the disk")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestDeployChecksumMismatchLeavesNoTable(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	url := serve(t, img, "")
	path := oldSystemDisk(t, 64*mib)
	want := strings.Repeat("ab", 32)
	j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: want, ChecksumType: "sha256", DiskGroupID: 1}
	rec := &recorder{}
	_, err := rec.run(t, j, path)
	if err == nil {
		t.Fatal("deploy with a wrong checksum succeeded")
	}
	got := sumHex(sha256.New(), img)
	msg := "Bad sha256 for downloaded file, got : " + got + " while expecting " + want + "."
	if job.Message(err) != msg {
		t.Errorf("message %q, want %q", job.Message(err), msg)
	}
	last := rec.events[len(rec.events)-1]
	if last.Status != job.StatusError || last.Message != msg || last.Code != job.ChecksumMismatch || last.Step != job.StepVerify {
		t.Errorf("last event %+v", last)
	}
	testutil.AssertNoTable(t, path)
}

func TestDeploySecretsNeverShown(t *testing.T) {
	const secret = "SECRET-TOKEN-4f9a"
	const userSecret = "USERDATA-SECRET-77"
	img := testImage(t, 16*mib, 512)
	url := serve(t, img, secret)
	for _, tc := range []struct {
		name  string
		url   string
		token string
		ok    bool
	}{
		{"success", url, secret, true},
		{"forbidden", url, "wrong-" + secret, false},
		{"not found", strings.TrimSuffix(url, "/img") + "/nothing?sig=" + secret, secret, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := oldSystemDisk(t, 32*mib)
			disk := openFile(t, path)
			j := &job.Job{ImageURL: tc.url, ImageType: "raw", DiskGroupID: 1,
				Headers:     []job.Header{{Name: "X-Token", Value: tc.token}},
				ConfigDrive: &job.ConfigDrive{Hostname: "web1", UserData: []byte("#!/bin/sh\necho " + userSecret)}}
			rec := &recorder{}
			_, err := rec.deployer().Deploy(context.Background(), j, disk)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v", err)
			}
			all := rec.all()
			if err != nil {
				all += err.Error() + job.Message(err)
				if !strings.HasPrefix(job.Message(err), "Could not download image located : ") {
					t.Errorf("message %q", job.Message(err))
				}
			}
			for _, s := range []string{secret, userSecret} {
				if strings.Contains(all, s) {
					t.Errorf("secret %q shown:\n%s", s, all)
				}
			}
		})
	}
}

func TestDeployRefusesWrongFormatBeforeWriting(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	qcow := append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 1<<16)...)
	for _, tc := range []struct {
		name, typ string
		data      []byte
		msg       string
	}{
		{"qcow2 declared raw", "raw", qcow, "image provided format is qcow2 which does not match expected raw format"},
		{"raw declared qcow2", "qcow2", img, "image provided format is raw which does not match expected qcow2 format"},
		{"no table", "raw", bytes.Repeat([]byte("no disk "), 1<<16), "image provided format is not of type raw because no partition table was found. It seems to contain: unknown data"},
		{"corrupt gzip", "raw", bytes.Repeat([]byte{0x1f, 0x8b, 8, 0}, 1<<16), "gzip image refused: corrupt compressed data"},
		{"too big", "raw", testImage(t, 48*mib, 512), "image provided has a size of 50331648 bytes which is larger than "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := oldSystemDisk(t, 32*mib)
			before, _ := os.ReadFile(path)
			disk := openFile(t, path)
			j := &job.Job{ImageURL: serve(t, tc.data, ""), ImageType: tc.typ, DiskGroupID: 1}
			_, err := (&recorder{}).deployer().Deploy(context.Background(), j, disk)
			if err == nil || !strings.HasPrefix(job.Message(err), tc.msg) {
				t.Fatalf("err %v, want %q", err, tc.msg)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Error("the target changed")
			}
		})
	}
}

// fakeRebooter records reboots, and how many events were stored then.
type fakeRebooter struct {
	called int
	rec    *recorder
	seen   int // events stored when Reboot was called
}

func (f *fakeRebooter) Reboot(context.Context) error {
	f.called++
	if f.rec != nil {
		f.rec.mu.Lock()
		f.seen = len(f.rec.events)
		f.rec.mu.Unlock()
	}
	return nil
}

// ackReporter is a FinalReporter whose Final fails when refuse is set.
type ackReporter struct {
	*recorder
	refuse bool
}

func (a ackReporter) Event(e job.Event) { a.report(e) }
func (a ackReporter) Final(ctx context.Context, e job.Event) error {
	if a.refuse {
		return context.DeadlineExceeded
	}
	a.report(e)
	return nil
}

// TestRunRebootsAfterFinal: the machine reboots once, after the final
// "done" was acknowledged; never after an error, never when the final
// status was not acknowledged.
func TestRunRebootsAfterFinal(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	url := serve(t, img, "")
	sum := sumHex(sha256.New(), img)
	for _, tc := range []struct {
		name     string
		checksum string
		refuse   bool
		reboots  int
	}{
		{"done", sum, false, 1},
		{"error", strings.Repeat("0", 64), false, 0},
		{"not acknowledged", sum, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			rb := &fakeRebooter{rec: rec}
			j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: tc.checksum, ChecksumType: "sha256", DiskGroupID: 1}
			_, err := Run(context.Background(), j, Env{Target: oldSystemDisk(t, 32*mib), Report: ackReporter{rec, tc.refuse}, Rebooter: rb})
			if rb.called != tc.reboots {
				t.Errorf("reboots %d, want %d (err %v)", rb.called, tc.reboots, err)
			}
			if tc.reboots > 0 {
				if err != nil || rb.seen != len(rec.events) || rec.events[rb.seen-1].Status != job.StatusDone {
					t.Errorf("reboot before the final status was stored: err %v, seen %d of %d", err, rb.seen, len(rec.events))
				}
			} else if err == nil {
				t.Error("no error")
			}
		})
	}
}

// TestRunEvents: events are numbered, timed, typed; every step name is
// used for one stage only; a raw deploy has its verify step; a 1 GiB
// deploy sends a bounded number of progress events (the Sink throttles).
func TestRunEvents(t *testing.T) {
	const size = 1 << 30
	img := testImage(t, 64*mib, 512)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The test image without its backup GPT, then zeros up to 1 GiB:
		// the table is read from the primary header and relocated.
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Write(img[:len(img)-2*mib])
		zero := make([]byte, 4*mib)
		for n := int64(len(img) - 2*mib); n < size; n += int64(len(zero)) {
			if _, err := w.Write(zero[:min(int64(len(zero)), size-n)]); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	rec := &recorder{}
	path := testutil.SparseFile(t, size+64*mib)
	_, err := Run(context.Background(), &job.Job{ImageURL: srv.URL, ImageType: "raw", DiskGroupID: 1},
		Env{Target: path, Report: ReporterFunc(rec.report), ProgressInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	progress, steps := 0, map[job.Step]int{}
	var prev job.Step
	for i, e := range rec.events {
		if e.Seq != int64(i+1) || e.Time.IsZero() || e.Kind == "" {
			t.Fatalf("event %d: %+v", i, e)
		}
		if e.Kind == job.KindProgress {
			progress++
		}
		if e.Step != prev {
			steps[e.Step]++
			prev = e.Step
		}
	}
	for s, n := range steps {
		if n != 1 {
			t.Errorf("step %s started %d times: %v", s, n, rec.all())
		}
	}
	for _, s := range []job.Step{job.StepPreflight, job.StepDownload, job.StepVerify, job.StepWrite, job.StepRelocate, job.StepBootCheck, job.StepFinish} {
		if steps[s] != 1 {
			t.Errorf("no %s step", s)
		}
	}
	last := rec.events[len(rec.events)-1]
	if last.Status != job.StatusDone || last.Code != job.MsgDone || last.BytesDone != size {
		t.Errorf("final %+v", last)
	}
	// 1 GiB takes a few seconds: at one progress event per 100 ms per
	// step, well under 200. Unthrottled, imaging reports every 100 ms of
	// writing plus every chunk staged.
	if progress == 0 || progress > 200 {
		t.Errorf("%d progress events", progress)
	}
	t.Logf("%d events, %d progress", len(rec.events), progress)
}

// TestSinkThrottle: the throttle alone, with a controlled clock.
func TestSinkThrottle(t *testing.T) {
	var got []job.Event
	s := NewSink(ReporterFunc(func(e job.Event) { got = append(got, e) }), time.Second)
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	s.Emit(job.Event{Step: job.StepDownload})
	for i := range 150 { // 150 progress events over 1.5 s: 2 pass (the first, then one after 1 s)
		s.Emit(job.Event{Step: job.StepDownload, Kind: job.KindProgress, BytesDone: int64(i), BytesTotal: 1000})
		now = now.Add(10 * time.Millisecond)
	}
	s.Emit(job.Event{Step: job.StepDownload, Kind: job.KindWarning, Message: "w"})                       // always
	s.Emit(job.Event{Step: job.StepDownload, Kind: job.KindProgress, BytesDone: 1000, BytesTotal: 1000}) // completes: always
	s.Emit(job.Event{Step: job.StepVerify})                                                              // step change: always
	kinds := ""
	for _, e := range got {
		kinds += string(e.Kind[0])
	}
	if kinds != "ippwpi" {
		t.Errorf("passed %q", kinds)
	}
	if got[len(got)-1].Seq != int64(len(got)) || s.Seq() != int64(len(got)) {
		t.Error("seq")
	}
}

// TestSinkEndsAtFinal: nothing passes after the final event, so no event
// can take a higher seq than the final one and reach the reporter before
// it (the control plane refuses a batch whose seqs go back).
func TestSinkEndsAtFinal(t *testing.T) {
	for _, viaStamp := range []bool{true, false} {
		var got []job.Event
		s := NewSink(ReporterFunc(func(e job.Event) { got = append(got, e) }), time.Nanosecond)
		s.Emit(job.Event{Step: job.StepWrite, Kind: job.KindProgress, BytesDone: 1, BytesTotal: 9})
		final := job.Event{Status: job.StatusError, Step: job.StepWrite, Code: job.WriteFailed}
		if viaStamp {
			final = s.stamp(final)
		} else {
			final, _ = s.Emit(final)
		}
		if _, sent := s.Emit(job.Event{Step: job.StepWrite, Kind: job.KindProgress, BytesDone: 2, BytesTotal: 9}); sent {
			t.Errorf("stamp %v: an event passed after the final one", viaStamp)
		}
		if final.Seq != 2 || s.Seq() != 2 || len(got) != map[bool]int{true: 1, false: 2}[viaStamp] {
			t.Errorf("stamp %v: final seq %d, sink seq %d, %d events out", viaStamp, final.Seq, s.Seq(), len(got))
		}
	}
}

// TestDeployLoopDevices deploys onto loop devices with 512 and 4096-byte
// logical sectors (with a matching image), and refuses a 512 image on the
// 4096 device before any byte changes.
func TestDeployLoopDevices(t *testing.T) {
	testutil.RequireRoot(t)
	for _, ss := range []int64{512, 4096} {
		t.Run(itoa(ss), func(t *testing.T) {
			img := testImage(t, 24*mib, ss)
			url := serve(t, img, "")
			file := oldSystemDisk(t, 64*mib)
			dev := testutil.LoopDevice(t, file, int(ss))
			disk, err := blockdev.Open(dev, blockdev.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer disk.Close()
			if disk.SectorSize() != ss {
				t.Fatalf("sector size %d", disk.SectorSize())
			}
			j := &job.Job{ImageURL: url, ImageType: "raw", Checksum: sumHex(sha256.New(), img), ChecksumType: "sha256", DiskGroupID: 1,
				ConfigDrive: &job.ConfigDrive{Hostname: "loop"}}
			res, err := (&recorder{}).deployer().Deploy(context.Background(), j, disk)
			if err != nil {
				t.Fatal(err)
			}
			if res.ConfigDrive == nil {
				t.Fatal("no ConfigDrive partition")
			}
			got := make([]byte, len(img)-3*mib)
			if _, err := disk.ReadAt(got, mib); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, img[mib:len(img)-2*mib]) {
				t.Error("loop device content differs from the image")
			}
		})
	}
	t.Run("512 image on 4096 disk", func(t *testing.T) {
		img := testImage(t, 24*mib, 512)
		file := oldSystemDisk(t, 64*mib)
		before, _ := os.ReadFile(file)
		dev := testutil.LoopDevice(t, file, 4096)
		disk, err := blockdev.Open(dev, blockdev.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer disk.Close()
		j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1}
		_, err = (&recorder{}).deployer().Deploy(context.Background(), j, disk)
		if err == nil || job.Message(err) != "image sector size 512 does not match disk sector size 4096" {
			t.Fatalf("err %v", err)
		}
		disk.Close()
		after, _ := os.ReadFile(file)
		if sha256.Sum256(before) != sha256.Sum256(after) {
			t.Error("the device changed")
		}
	})
}
