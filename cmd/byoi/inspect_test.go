package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

const inspMiB = 1 << 20

// inspImage builds a 24 MiB GPT image: an ESP holding
// \EFI\BOOT\BOOTX64.EFI and \EFI\debian\grubx64.efi, a root partition,
// and MBR boot code.
func inspImage(t *testing.T) []byte {
	t.Helper()
	return testutil.ESPImage(t, []string{"EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi"}, true, 11)
}

func inspWrite(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

func inspRun(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	qcow2.RegisterDecompressors()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var so, se bytes.Buffer
	err = cmdInspect(ctx, args, &so, &se)
	return so.String(), se.String(), err
}

func TestInspectLocalText(t *testing.T) {
	img := inspImage(t)
	path := inspWrite(t, "disk.img", img)
	before, _ := os.Stat(path)
	out, errOut, err := inspRun(t, "--efi-bootloader-path", `\EFI\debian\grubx64.efi`, "--type", "raw", "--disk-size", "1073741824", "--sector-size", "512", path)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	for _, want := range []string{
		"format: raw, 25165824 bytes", "partition table: gpt", "EFI system partition", "root",
		"EFI System Partition: partition 1 (FAT", `\EFI\BOOT\BOOTX64.EFI: present`,
		`EFI bootloader \EFI\debian\grubx64.efi: found`, "legacy BIOS boot: yes", "problems: none found",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Nothing written: same bytes, same modification time.
	after, _ := os.Stat(path)
	got, _ := os.ReadFile(path)
	if sha256.Sum256(got) != sha256.Sum256(img) || !after.ModTime().Equal(before.ModTime()) {
		t.Error("the image changed")
	}
}

func TestInspectJSONQcow2(t *testing.T) {
	raw := inspImage(t)
	q, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	path := inspWrite(t, "disk.qcow2", q)
	out, errOut, err := inspRun(t, "--json", "--type", "raw", "--disk-size", "16777216", "--sector-size", "4096", path)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	var rep struct {
		Source      string `json:"source"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtualSize"`
		SectorSize  int64  `json:"sectorSize"`
		Qcow2       *struct {
			Version     int      `json:"version"`
			ClusterSize int64    `json:"clusterSize"`
			Compression string   `json:"compression"`
			Features    []string `json:"features"`
			Accepted    bool     `json:"accepted"`
		} `json:"qcow2"`
		Table *struct {
			Type       string `json:"type"`
			Partitions []struct {
				Number   int    `json:"number"`
				Start    int64  `json:"start"`
				Size     int64  `json:"size"`
				TypeName string `json:"typeName"`
				Name     string `json:"name"`
			} `json:"partitions"`
		} `json:"table"`
		Boot *struct {
			ESP           bool `json:"esp"`
			RemovablePath bool `json:"removablePath"`
			Legacy        bool `json:"legacyBootable"`
		} `json:"boot"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.Source != path || rep.Format != "qcow2" || rep.VirtualSize != int64(len(raw)) || rep.SectorSize != 512 {
		t.Errorf("report %+v", rep)
	}
	if rep.Qcow2 == nil || rep.Qcow2.Version != 3 || rep.Qcow2.ClusterSize != 65536 || rep.Qcow2.Compression != "zlib" || !rep.Qcow2.Accepted || rep.Qcow2.Features == nil {
		t.Errorf("qcow2 %+v", rep.Qcow2)
	}
	if rep.Table == nil || rep.Table.Type != "gpt" || len(rep.Table.Partitions) != 2 ||
		rep.Table.Partitions[0].Name != "EFI system partition" || rep.Table.Partitions[1].Name != "root" ||
		rep.Table.Partitions[1].Start != 9*inspMiB || rep.Table.Partitions[1].TypeName == "" {
		t.Errorf("table %+v", rep.Table)
	}
	if rep.Boot == nil || !rep.Boot.ESP || !rep.Boot.RemovablePath || !rep.Boot.Legacy {
		t.Errorf("boot %+v", rep.Boot)
	}
	want := []string{
		"image provided format is qcow2 which does not match expected raw format",
		"image provided has a size of 25165824 bytes which is larger than the target disk of 16777216 bytes",
		"image sector size 512 does not match disk sector size 4096",
	}
	if strings.Join(rep.Problems, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems %q", rep.Problems)
	}
}

func TestInspectNotADiskImageCLI(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("a tarball, maybe "), 5000))
	zw.Close()
	path := inspWrite(t, "image.img.gz", gz.Bytes())
	out, _, err := inspRun(t, path)
	if err != nil {
		t.Fatal(err) // problems are data: exit 0
	}
	// A compressed raw image is looked into: this one holds no disk.
	if !strings.Contains(out, "compression: gzip") || !strings.Contains(out, "problems (1):\n  - image provided format is not of type raw because no partition table was found. It seems to contain: unknown data") {
		t.Errorf("output:\n%s", out)
	}

	img, err := testimage.GPT(16*inspMiB, 4096, []testimage.Part{{Name: "data4k", Type: testimage.TypeLinux, Start: inspMiB, Size: 8 * inspMiB}}, 2)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err = inspRun(t, "--sector-size", "512", inspWrite(t, "4k.img", img))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sector size: 4096", "data4k", "image sector size 4096 does not match disk sector size 512"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestInspectUsageErrors(t *testing.T) {
	path := inspWrite(t, "x", []byte("x"))
	for _, args := range [][]string{
		{}, {path, path}, {"--type", "vmdk", path}, {"--sector-size", "1000", path}, {"--disk-size", "-1", path},
		{"--header", "X-Token: abc", path},
	} {
		_, _, err := inspRun(t, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: %v", args, err)
		}
	}
	if _, _, err := inspRun(t, filepath.Join(t.TempDir(), "missing")); err == nil || errors.As(err, new(usageError)) {
		t.Errorf("missing file: %v", err)
	}
}

// TestInspectURL reads the image over HTTP with a secret header, through
// Range requests and, from a server that ignores Range, through the whole
// download; the secret is never printed.
func TestInspectURL(t *testing.T) {
	img := inspImage(t)
	const secret = "tok-Zq81-never-shown"
	var ranged, whole int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Token") != secret {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		switch r.URL.Path {
		case "/img":
			if r.Header.Get("Range") != "" {
				ranged++
			} else {
				whole++
			}
			http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(img))
		case "/norange":
			whole++
			w.Header().Set("Content-Length", itoa64(int64(len(img))))
			w.Write(img)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	var all strings.Builder
	out, errOut, err := inspRun(t, "-v", "--header", "X-Token: "+secret, srv.URL+"/img?sig="+secret)
	all.WriteString(out + errOut)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !strings.Contains(out, "EFI system partition") || !strings.Contains(out, "root") || !strings.Contains(out, "read via HTTP range requests") ||
		!strings.Contains(out, "problems: none found") || whole != 0 || ranged == 0 {
		t.Errorf("ranged %d whole %d, output:\n%s", ranged, whole, out)
	}

	out, errOut, err = inspRun(t, "--json", "-v", "--header", "X-Token: "+secret, srv.URL+"/norange")
	all.WriteString(out + errOut)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if via, _ := rep["via"].(string); !strings.HasPrefix(via, "whole download") || rep["format"] != "raw" || rep["table"] == nil {
		t.Errorf("report %v", rep)
	}

	// A wrong token: a download error, without the secret.
	_, errOut, err = inspRun(t, "-v", "--header", "X-Token: "+secret+"-wrong", srv.URL+"/img?sig="+secret)
	if err == nil {
		t.Fatal("403 accepted")
	}
	all.WriteString(errOut + err.Error() + job.Message(err))
	if strings.Contains(all.String(), secret) {
		t.Errorf("the secret was printed:\n%s", all.String())
	}
}

func itoa64(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestInspectChecksFacts: inspect runs the image checks against the
// server's facts given by flags or by an inventory file (issue 26): a
// UEFI server and an image without an ESP is a refusal, printed with its
// code; the same image for a BIOS server passes the boot check.
func TestInspectChecksFacts(t *testing.T) {
	img, err := testimage.GPT(16<<20, 512, []testimage.Part{
		{Name: "root", Type: testimage.TypeLinux, Start: 1 << 20, Size: 13 << 20, Fill: testimage.FillMixed},
	}, 3)
	if err != nil {
		t.Fatal(err)
	}
	copy(img, []byte{0xfa, 0xcd, 0x18})
	path := inspWrite(t, "noesp.img", img)
	out, errOut, err := inspRun(t, "--boot-mode", "uefi", path)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !strings.Contains(out, "refuse CheckUEFINoESP") || !strings.Contains(out, job.Text(job.CheckUEFINoESP)) {
		t.Errorf("no UEFI refusal:\n%s", out)
	}
	inv := inspWrite(t, "inv.json", []byte(`{"bootMode":"legacy","diskGroups":[],"disks":[{"name":"nvme0n1","diskGroupId":1,"size":1,"driver":"nvme"}]}`))
	out, errOut, err = inspRun(t, "--inventory", inv, "--json", path)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	var rep struct {
		Problems []string
		Checks   struct {
			Findings []struct{ Code, Severity string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	var codes []string
	for _, f := range rep.Checks.Findings {
		codes = append(codes, f.Code+"/"+f.Severity)
	}
	if strings.Contains(strings.Join(codes, " "), "CheckUEFI") || !strings.Contains(strings.Join(codes, " "), "CheckBIOSNoCoreSpace/warn") {
		t.Errorf("legacy inventory: findings %v", codes)
	}
	if _, _, err := inspRun(t, "--boot-mode", "efi", path); err == nil {
		t.Error("--boot-mode efi accepted")
	}
}

// TestInspectURLChecksRanges: inspecting a URL with the checks reads the
// image through a bounded number of Range requests and a small part of
// its bytes (counted here, on the server's side).
func TestInspectURLChecksRanges(t *testing.T) {
	img := inspImage(t)
	var requests, whole int
	var served int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		if r.Header.Get("Range") == "" && r.Method == http.MethodGet {
			whole++
		}
		cw := &countingWriter{ResponseWriter: w}
		http.ServeContent(cw, r, "img", time.Time{}, bytes.NewReader(img))
		served += cw.n
	}))
	defer srv.Close()
	out, errOut, err := inspRun(t, "--boot-mode", "uefi", "--json", srv.URL+"/img")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	var rep struct {
		Problems []string
		Checks   *struct {
			Reads     int
			BytesRead int64
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Checks == nil || rep.Checks.Reads == 0 {
		t.Fatalf("no checks in %s", out)
	}
	t.Logf("%d requests, %d bytes served of %d; the checks made %d reads of %d bytes", requests, served, len(img), rep.Checks.Reads, rep.Checks.BytesRead)
	if whole != 0 || requests > 40 || served > int64(len(img))/4 {
		t.Errorf("%d requests (%d whole), %d bytes served of %d", requests, whole, served, len(img))
	}
	if len(rep.Problems) != 0 {
		t.Errorf("problems %v", rep.Problems)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}
