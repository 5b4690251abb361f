package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/blockdev/blockdevtest"
	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/job"
)

// TestCatalogCoverage triggers, through the real pipeline, every catalog
// code of the deployment's group (neither the job spec's, which job's
// TestValidationCodes covers, nor the control plane's, which its own
// coverage test covers): each error code is the one Describe gives,
// each warning and step text arrives as an event, each progress text is
// what job.ProgressMessage makes of a real run's events.
func TestCatalogCoverage(t *testing.T) {
	seen := map[job.Code]string{}
	note := func(err error, events []job.Event, how string) {
		if err != nil {
			c, _ := Describe(err)
			seen[c] = how
		}
		for _, e := range events {
			if e.Code != "" {
				seen[e.Code] = how
			}
			seen[codeOfText(job.ProgressMessage(e))] = how + " (status message)"
		}
	}
	deploy := func(how string, data []byte, typ string, diskSize int64, mod func(*job.Job, *Env)) {
		t.Helper()
		path := crashcheck.OldSystem(t, 512, diskSize)
		j := &job.Job{ImageURL: serve(t, data, ""), ImageType: typ, DiskGroupID: 1}
		rec := &recorder{}
		env := Env{Target: path, Report: ReporterFunc(rec.report), Options: Options{Fetch: rec.deployer().Fetch}}
		if mod != nil {
			mod(j, &env)
		}
		_, err := Run(context.Background(), j, env)
		note(err, rec.events, how)
	}
	img := testImage(t, 16*mib, 512)
	withSum := func(sum string) func(*job.Job, *Env) {
		return func(j *job.Job, _ *Env) { j.Checksum, j.ChecksumType = sum, "sha256" }
	}

	// No image type given (issue 24): detected, or refused.
	deploy("type detected", img, job.ImageTypeDetect, 32*mib, nil)
	deploy("type undetected", make([]byte, 1<<20), job.ImageTypeDetect, 32*mib, nil)
	// A good raw deploy with a ConfigDrive, and no MBR boot code nor a
	// readable ESP: progress texts, step texts, boot warnings.
	deploy("raw deploy", img, "raw", 32*mib, func(j *job.Job, _ *Env) { j.ConfigDrive = &job.ConfigDrive{Hostname: "c"} })
	// A ConfigDrive on a server whose inventory names no boot NIC: no
	// network_data.json (issue 26).
	deploy("boot NIC unknown", img, "raw", 32*mib, func(j *job.Job, env *Env) {
		j.ConfigDrive = &job.ConfigDrive{Hostname: "c"}
		env.Inventory = &agentapi.Inventory{}
	})
	// Errors, each from its real cause.
	deploy("checksum", img, "raw", 32*mib, withSum(sumHex(sha256.New(), []byte("x"))))
	deploy("qcow2 declared raw", append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 1<<16)...), "raw", 32*mib, nil)
	deploy("no table", bytes.Repeat([]byte{7}, 1<<20), "raw", 32*mib, nil)
	deploy("too big", testImage(t, 48*mib, 512), "raw", 32*mib, nil)
	deploy("sector size", testImage(t, 16*mib, 4096), "raw", 32*mib, nil)
	deploy("hidden GPT", gptWithMBR(t, func(m []byte) { m[446+4] = 0x8E }), "raw", 32*mib, nil)
	deploy("repaired MBR", gptWithMBR(t, func(m []byte) { binary.LittleEndian.PutUint32(m[446+8:], 2) }), "raw", 32*mib, nil)
	deploy("bootloader", img, "raw", 32*mib, func(j *job.Job, _ *Env) { j.EFIBootloaderPath = `\EFI\nothing\x.efi` })
	deploy("download", img, "raw", 32*mib, func(j *job.Job, env *Env) { j.ImageURL = "http://127.0.0.1:1/img"; env.Fetch.MaxRetries = -1 })
	full, _ := testimage.GPT(32*mib, 512, []testimage.Part{{Name: "root", Type: testimage.TypeLinux, Start: mib, Size: 31*mib - 64<<10}}, 3)
	deploy("configdrive room", full, "raw", 32*mib, func(j *job.Job, _ *Env) { j.ConfigDrive = &job.ConfigDrive{Hostname: "c"} })
	q, _ := testimage.Qcow2(img, 16)
	deploy("qcow2 deploy", q, "qcow2", 32*mib, nil)
	deploy("qcow2 staged deploy", q, "qcow2", 32*mib, func(_ *job.Job, env *Env) { env.Qcow2Staging = true })
	noESP, _ := testimage.GPT(16*mib, 512, []testimage.Part{{Name: "root", Type: testimage.TypeLinux, Start: mib, Size: 8 * mib}}, 4)
	deploy("no ESP", noESP, "raw", 32*mib, func(_ *job.Job, env *Env) { env.Rebooter, env.EFIVarsDir = &fakeRebooter{}, fakeEFIVars(t) })
	deploy("no removable path", testutil.ESPImage(t, []string{"EFI/debian/grubx64.efi"}, false, 6), "raw", 32*mib, nil)
	deploy("qcow2 too big", q, "qcow2", 20*mib, func(_ *job.Job, env *Env) { env.MemoryReserve, env.Qcow2Staging = 1<<60, true })
	bad := append([]byte(nil), q...)
	bad[20+3] = 63 // cluster_bits
	deploy("qcow2 refused", bad, "qcow2", 32*mib, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, &job.Job{ImageURL: "http://127.0.0.1:1/i", ImageType: "raw", DiskGroupID: 1}, Env{Target: crashcheck.OldSystem(t, 512, 32*mib)})
	note(err, nil, "cancelled")
	// An interruption no step is known for (job's own rule).
	note(fmt.Errorf("x: %w", context.Canceled), nil, "interrupted outside a step")
	_, err = Run(context.Background(), &job.Job{ImageURL: "http://127.0.0.1:1/i", ImageType: "raw", DiskGroupID: 1}, Env{Target: "/nonexistent/disk"})
	note(err, nil, "internal")

	// An image whose GPT cannot be moved: a partition past the end of a
	// disk exactly the image's size... the relocation refuses it.
	bg := badGPT(t)
	deploy("relocate", bg, "raw", 32*mib, withSum(sumHex(sha256.New(), bg)))

	// A write that fails (a disk that refuses writes past the head).
	{
		path := crashcheck.OldSystem(t, 512, 32*mib)
		d := openFile(t, path)
		rec := &recorder{}
		dep := rec.deployer()
		dep.Events = rec.report
		_, err := dep.Deploy(context.Background(), &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1}, &failingDisk{Device: d})
		note(err, rec.events, "write failure")
	}

	// The fake machine: disk groups, a disk in use, another config-2.
	m := blockdevtest.Virtio(map[string]int64{"vda": 64 * mib, "vdb": 64 * mib})
	m.Devs[0].Parts = []blockdevtest.Part{{Name: "vda1", DevNum: "252:1", Content: isoLabel("config-2")}}
	m.Mountinfo = "40 1 252:0 / /mnt rw - ext4 /dev/vda rw\n"
	r := m.Build(t, true)
	sys := blockdev.System{SysRoot: r.Sys, ProcRoot: r.Proc, DevRoot: r.Dev}
	for _, tc := range []struct {
		how   string
		group int
		cd    bool
	}{{"no such group", 5, false}, {"in use", 1, false}} {
		rec := &recorder{}
		j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: tc.group}
		_, err := Run(context.Background(), j, Env{Machine: sys, Report: ReporterFunc(rec.report)})
		note(err, rec.events, tc.how)
	}
	{
		m := blockdevtest.Virtio(map[string]int64{"vda": 64 * mib, "vdb": 64 * mib})
		m.Devs[1].Parts = []blockdevtest.Part{{Name: "vdb1", DevNum: "252:17", Content: isoLabel("config-2")}}
		r := m.Build(t, true)
		rec := &recorder{}
		j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1, ConfigDrive: &job.ConfigDrive{Hostname: "c"}}
		_, err := Run(context.Background(), j, Env{Machine: blockdev.System{SysRoot: r.Sys, ProcRoot: r.Proc, DevRoot: r.Dev}, Report: ReporterFunc(rec.report)})
		note(err, rec.events, "other config-2")
	}
	// A download without a length: "downloading N".
	{
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			w.Write(img)
		}))
		defer srv.Close()
		rec := &recorder{}
		_, err := Run(context.Background(), &job.Job{ImageURL: srv.URL, ImageType: "raw", DiskGroupID: 1}, Env{Target: crashcheck.OldSystem(t, 512, 32*mib), Report: ReporterFunc(rec.report), ProgressInterval: 1})
		note(err, rec.events, "no length")
	}
	// A download interrupted once (a warning), and one that stalls for
	// good with the download's own stall detection off (the watchdog).
	{
		var n sync.Mutex
		first := true
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Lock()
			again := first
			first = false
			n.Unlock()
			if again {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(img))
		}))
		defer srv.Close()
		rec := &recorder{}
		_, err := Run(context.Background(), &job.Job{ImageURL: srv.URL, ImageType: "raw", DiskGroupID: 1}, Env{Target: crashcheck.OldSystem(t, 512, 32*mib), Report: ReporterFunc(rec.report), Options: Options{Fetch: rec.deployer().Fetch}})
		note(err, rec.events, "download retried")
		err, events, _, _, _ := stalledRun(t, 300*time.Millisecond)
		note(err, events, "stalled")
	}
	// The re-read the kernel defers is a block device's: blockdev's loop
	// test (TestLoopMountedPartition) gets it; here, the error it wraps.
	note(blockdev.ErrRereadDeferred, nil, "re-read deferred")

	// OVA: a manifest mismatch, a manifest naming a missing member, a
	// VMDK naming another file, a second disk skipped (a warning).
	{
		vmdk, _ := testimage.VMDK{Raw: img, Name: "disk1.vmdk"}.StreamOptimized()
		ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{{File: "disk1.vmdk", Capacity: int64(len(img))}})}
		disk := testimage.Member{Name: "disk1.vmdk", Data: vmdk}
		mm, _ := testimage.Tar(ovf, testimage.Member{Name: "vm.mf", Data: testimage.Manifest("SHA256", false, ovf, testimage.Member{Name: "disk1.vmdk", Data: []byte("x")})}, disk)
		deploy("manifest mismatch", mm, "ova", 32*mib, nil)
		missing, _ := testimage.Tar(ovf, testimage.Member{Name: "vm.mf", Data: testimage.Manifest("SHA256", false, ovf, disk, testimage.Member{Name: "gone.vmdk"})}, disk)
		deploy("manifest member missing", missing, "ova", 32*mib, nil)
		evil, _ := testimage.VMDK{Raw: img, Name: "disk1.vmdk", Descriptor: testimage.Descriptor("streamOptimized", "/etc/shadow", int64(len(img))/512)}.StreamOptimized()
		ev, _ := testimage.Tar(ovf, testimage.Member{Name: "disk1.vmdk", Data: evil})
		deploy("vmdk extent", ev, "ova", 32*mib, nil)
		two := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(testimage.VMware, []testimage.OVFDisk{
			{File: "disk1.vmdk", Capacity: int64(len(img)), Address: 0},
			{File: "disk2.vmdk", Capacity: int64(len(img)), Address: 1}})}
		tw, _ := testimage.Tar(two, disk, testimage.Member{Name: "disk2.vmdk", Data: vmdk})
		deploy("second disk", tw, "ova", 32*mib, nil)
	}
	{
		// The image checks' own codes (issue 26): a strict job's warning
		// (a BIOS server, a GPT image with boot code and no BIOS boot
		// partition). Two refusals at once need an image with a system
		// (imagecheck's fixtures): CheckMore's text is built here.
		bios, err := testimage.GPT(16*mib, 512, []testimage.Part{{Name: "root", Type: testimage.TypeLinux, Start: mib, Size: 13 * mib, Fill: testimage.FillMixed}}, 5)
		if err != nil {
			t.Fatal(err)
		}
		copy(bios, []byte{0xfa, 0xcd, 0x18})
		deploy("strict job, warning", bios, "raw", 32*mib, func(j *job.Job, env *Env) {
			j.ImageChecks = job.ImageChecksStrict
			env.Inventory = &agentapi.Inventory{BootMode: agentapi.BootModeLegacy}
		})
		two := &CheckError{Findings: []imagecheck.Finding{
			{Code: job.CheckUEFINoESP, Message: job.Text(job.CheckUEFINoESP)},
			{Code: job.CheckCloudInitMissing, Message: job.Text(job.CheckCloudInitMissing)},
		}}
		if code, msg := Describe(two); code == job.CheckUEFINoESP && strings.Contains(msg, "; and 1 more: ") {
			seen[job.CheckMore] = "two refusals"
		}
	}
	for _, c := range job.Codes() {
		if job.IsJobSpecCode(c) || job.IsControlPlaneCode(c) || job.IsPowerCode(c) || job.IsImageCacheCode(c) || job.IsImageCheckCode(c) || job.IsPowerControlCode(c) {
			continue
		}
		if _, ok := seen[c]; !ok {
			t.Errorf("catalog code %s is never triggered", c)
		}
	}
	t.Logf("%d codes triggered", len(seen))
}

// codeOfText finds the catalog code whose text is s: its format as an
// anchored pattern (each verb any text), for the progress texts.
func codeOfText(s string) job.Code {
	verb := regexp.MustCompile(`%(\[\d+\])?[-+# 0]*\d*(\.\d+)?[a-zA-Z]`)
	for _, c := range job.Codes() {
		f := strings.ReplaceAll(job.Format(c), "%%", "%")
		parts := verb.Split(f, -1)
		for i := range parts {
			parts[i] = regexp.QuoteMeta(parts[i])
		}
		if regexp.MustCompile("^"+strings.Join(parts, ".+")+"$").MatchString(s) && strings.HasPrefix(string(c), "Msg") {
			return c
		}
	}
	return ""
}

// failingDisk fails every write after the first MiB: the image region.
type failingDisk struct{ *blockdev.Device }

func (f *failingDisk) WriteAt(p []byte, off int64) (int, error) {
	if off >= 2*mib && off < 14*mib {
		return 0, os.ErrPermission
	}
	return f.Device.WriteAt(p, off)
}

// isoLabel is the start of an ISO 9660 filesystem labelled label.
func isoLabel(label string) []byte {
	b := make([]byte, 64<<10)
	pvd := b[0x8000:]
	pvd[0] = 1
	copy(pvd[1:], "CD001")
	copy(pvd[40:72], label+string(bytes.Repeat([]byte(" "), 32-len(label))))
	return b
}

// badGPT is a GPT image whose second partition runs past the end of the
// image (the entries and CRCs otherwise valid): no disk of its size can
// hold it, and the relocation says so.
func badGPT(t *testing.T) []byte {
	t.Helper()
	img := testImage(t, 16*mib, 512)
	// Entry 2 (index 1) at LBA 2: its last LBA is at +40.
	e := img[1024+128 : 1024+256]
	binary.LittleEndian.PutUint64(e[40:], uint64(40*mib/512))
	fixGPTCRCs(img, 512)
	return img
}

// fixGPTCRCs recomputes the primary header's entry array and header CRCs.
func fixGPTCRCs(img []byte, ss int) {
	h := img[ss : 2*ss]
	n := binary.LittleEndian.Uint32(h[80:]) * binary.LittleEndian.Uint32(h[84:])
	arr := img[2*ss : 2*ss+int(n)]
	binary.LittleEndian.PutUint32(h[88:], crc32IEEE(arr))
	binary.LittleEndian.PutUint32(h[16:], 0)
	size := binary.LittleEndian.Uint32(h[12:])
	binary.LittleEndian.PutUint32(h[16:], crc32IEEE(h[:size]))
}

func crc32IEEE(b []byte) uint32 { return crc32.ChecksumIEEE(b) }
