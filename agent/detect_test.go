package agent

import (
	"bytes"
	"compress/gzip"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/job"
)

// TestDetectImageType: a job without an image type (OVH's reinstall schema
// does not require one) is deployed as what its first bytes are: qcow2,
// OVA, raw, compressed raw, from a server with or without byte ranges; the
// disk then holds the image, as with a declared type.
func TestDetectImageType(t *testing.T) {
	img := testImage(t, 16*mib, 512)
	q, err := testimage.Qcow2(img, 16)
	if err != nil {
		t.Fatal(err)
	}
	vmdk, err := testimage.VMDK{Raw: img, Name: "disk1.vmdk"}.StreamOptimized()
	if err != nil {
		t.Fatal(err)
	}
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: int64(len(img))}})}
	ova, err := testimage.Tar(ovf, testimage.Member{Name: "disk1.vmdk", Data: vmdk})
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(img)
	zw.Close()
	for _, tt := range []struct {
		name, want, found string
		data              []byte
		noRange           bool
	}{
		{"qcow2", job.ImageTypeQcow2, "qcow2", q, false},
		{"ova", job.ImageTypeOVA, "tar", ova, false},
		{"raw", job.ImageTypeRaw, "raw", img, false},
		{"gzip raw", job.ImageTypeRaw, "gzip", gz.Bytes(), false},
		{"qcow2 without ranges", job.ImageTypeQcow2, "qcow2", q, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ranged, plain atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Range") != "" {
					ranged.Add(1)
					if tt.noRange {
						w.Write(tt.data) // a server that ignores Range
						return
					}
				} else {
					plain.Add(1)
				}
				http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(tt.data))
			}))
			defer srv.Close()
			path := crashcheck.OldSystem(t, 512, 32*mib)
			rec := &recorder{}
			res, err := rec.run(t, &job.Job{ImageURL: srv.URL + "/img", ImageType: job.ImageTypeDetect, DiskGroupID: 1}, path)
			if err != nil {
				t.Fatalf("deploy: %v\n%s", err, rec.all())
			}
			if res.Format != tt.want {
				t.Errorf("format %q, want %q", res.Format, tt.want)
			}
			found := false
			for _, e := range rec.events {
				if e.Code == job.MsgImageTypeDetected && e.Message == job.Text(job.MsgImageTypeDetected, tt.want, tt.found) {
					found = true
				}
			}
			if !found {
				t.Errorf("no detection event:\n%s", rec.all())
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// The image's first partition is on the disk as in the image.
			if !bytes.Equal(got[mib:5*mib], img[mib:5*mib]) {
				t.Error("the disk does not hold the image")
			}
			// One range read of the head (or, without ranges, a plain GET closed
			// after it), then the download.
			wantPlain := int64(1)
			if tt.noRange {
				wantPlain = 2
			}
			if ranged.Load() != 1 || plain.Load() != wantPlain {
				t.Errorf("%d range requests, %d plain ones", ranged.Load(), plain.Load())
			}
		})
	}
}

// TestDetectImageTypeRefused: first bytes that are none of the types are
// refused before the disk is touched, with what they look like.
func TestDetectImageTypeRefused(t *testing.T) {
	for _, tt := range []struct {
		name, found string
		data        []byte
	}{
		{"zeros", "empty", make([]byte, 1<<20)},
		{"iso without a table", "iso9660", func() []byte { b := make([]byte, 1<<20); copy(b[32769:], "CD001"); return b }()},
		{"zip", "zip", append([]byte("PK\x03\x04"), make([]byte, 4096)...)},
		{"vmdk alone", "vmdk", append([]byte("KDMV"), make([]byte, 4096)...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := crashcheck.OldSystem(t, 512, 32*mib)
			before, _ := os.ReadFile(path)
			rec := &recorder{}
			_, err := rec.run(t, &job.Job{ImageURL: serve(t, tt.data, ""), ImageType: job.ImageTypeDetect, DiskGroupID: 1}, path)
			var je *job.Error
			if !errors.As(err, &je) || je.Code != job.ImageTypeUndetected || err.Error() != job.Text(job.ImageTypeUndetected, tt.found) {
				t.Fatalf("got %v, want %s", err, job.Text(job.ImageTypeUndetected, tt.found))
			}
			if FailedStep(err) != job.StepDownload {
				t.Errorf("failed in step %q", FailedStep(err))
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("the disk was touched")
			}
		})
	}
}
