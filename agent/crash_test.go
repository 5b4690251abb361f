package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/byoi/byoi/internal/crashcheck"

	"github.com/byoi/byoi/configdrive"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// The crash-point harness. A deployment is stopped at every write, zeroing
// and flush it makes on the disk in turn, as kill -9 would stop it: that
// operation and every later one never reach the disk; every earlier one
// did. The disk must then show one of three things: nothing at all (no
// partition table to sfdisk, nothing to blkid -p, no GPT for sgdisk's
// backup recovery, no valid GPT header in any sector); the old system
// whole (a crash before any of its data was touched: whatever table is
// still readable describes data that is byte for byte the old system's);
// or the complete new system (every partition of the finished deployment,
// byte for byte, readable from its primary or its backup GPT). Never a
// table over a mixture. The whole sweep runs with -crash.full (or
// BYOI_CRASH_FULL=1); by default every point of one configuration and a
// stride of the others.

var crashFull = flag.Bool("crash.full", false, "crash-point harness: try every point of every configuration")

var errCrashed = errors.New("crashed (simulated kill -9)")

// crashDisk passes operations to the disk until the crash point, then
// fails every one without touching the disk. It counts the operations.
type crashDisk struct {
	*blockdev.Device
	mu      sync.Mutex
	ops     int
	crashAt int // -1: never
	crashed bool
}

func (c *crashDisk) step() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return false
	}
	if c.ops == c.crashAt {
		c.crashed = true
		return false
	}
	c.ops++
	return true
}

func (c *crashDisk) WriteAt(p []byte, off int64) (int, error) {
	if !c.step() {
		return 0, errCrashed
	}
	return c.Device.WriteAt(p, off)
}

func (c *crashDisk) ZeroRange(ctx context.Context, off, n int64) error {
	if !c.step() {
		return errCrashed
	}
	return c.Device.ZeroRange(ctx, off, n)
}

func (c *crashDisk) Sync() error {
	if !c.step() {
		return errCrashed
	}
	return c.Device.Sync()
}

// crashConfig is one deployment shape.
type crashConfig struct {
	name        string
	sector      int64
	qcow2       bool
	stream      bool // qcow2 converted as it streams (else staged)
	tail        bool // qcow2 staged on the disk's tail
	ova         bool // an OVA (streamOptimized VMDK)
	zstd        bool // a zstd-compressed raw image
	configDrive bool
}

func (c crashConfig) String() string { return c.name }

func crashConfigs() []crashConfig {
	var out []crashConfig
	for _, ss := range []int64{512, 4096} {
		for _, kind := range []struct {
			n                   string
			qcow2, stream, tail bool
		}{{"raw", false, false, false}, {"qcow2-memory", true, false, false}, {"qcow2-tail", true, false, true}, {"qcow2-stream", true, true, false}} {
			for _, cd := range []bool{false, true} {
				name := fmt.Sprintf("%s-%d", kind.n, ss)
				if cd {
					name += "-configdrive"
				}
				out = append(out, crashConfig{name: name, sector: ss, qcow2: kind.qcow2, stream: kind.stream, tail: kind.tail, configDrive: cd})
			}
		}
	}
	out = append(out,
		crashConfig{name: "ova-512-configdrive", sector: 512, ova: true, configDrive: true},
		crashConfig{name: "raw-zstd-512-configdrive", sector: 512, zstd: true, configDrive: true})
	return out
}

const crashDiskSize = 64 * mib

// crashFixture is the image and job of a configuration. Every run
// deploys onto the same path (a fresh old disk each time): the ConfigDrive's
// uuid is derived from it, and runs must be comparable byte for byte.
type crashFixture struct {
	cfg  crashConfig
	j    *job.Job
	dep  *Deployer
	path string
	old  []byte // the old disk's bytes
}

var crashImages sync.Map // sector size → raw image

func newCrashFixture(t *testing.T, cfg crashConfig) *crashFixture {
	t.Helper()
	v, ok := crashImages.Load(cfg.sector)
	if !ok {
		v, _ = crashImages.LoadOrStore(cfg.sector, testImage(t, 24*mib, cfg.sector))
	}
	raw := v.([]byte)
	data, typ := raw, "raw"
	switch {
	case cfg.qcow2:
		q, err := testimage.Qcow2(raw, 16)
		if err != nil {
			t.Fatal(err)
		}
		data, typ = q, "qcow2"
	case cfg.ova:
		o, err := testimage.OVA(raw, testimage.VMware)
		if err != nil {
			t.Fatal(err)
		}
		data, typ = o, "ova"
	case cfg.zstd:
		var b bytes.Buffer
		zw, _ := zstd.NewWriter(&b)
		zw.Write(raw)
		zw.Close()
		data = b.Bytes()
	}
	sum := sha256.Sum256(data)
	j := &job.Job{ImageURL: serve(t, data, ""), ImageType: typ, Checksum: fmt.Sprintf("%x", sum), ChecksumType: "sha256", DiskGroupID: 1}
	if cfg.configDrive {
		j.ConfigDrive = &job.ConfigDrive{Hostname: "crash", SSHKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO82/7e9WQiwfzkfAePAXbwRasmsmauPfV02uYKlHDB9 c"}
	}
	dep := (&recorder{}).deployer()
	dep.Logger = nil
	if cfg.tail {
		dep.MemoryReserve = 1 << 60 // nothing fits in memory: the disk's tail
	}
	dep.Qcow2Staging = cfg.qcow2 && !cfg.stream
	oldPath := crashcheck.OldSystem(t, cfg.sector, crashDiskSize)
	old, err := os.ReadFile(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	return &crashFixture{cfg: cfg, j: j, dep: dep, path: filepath.Join(t.TempDir(), "disk.img"), old: old}
}

// run deploys onto a fresh old disk, crashing at op crashAt (-1: never).
// It returns the disk's path, the number of operations and Deploy's error.
func (f *crashFixture) run(t *testing.T, crashAt int) (string, int, error) {
	t.Helper()
	path := f.path
	if err := os.WriteFile(path, f.old, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := blockdev.Open(path, blockdev.OpenOptions{SectorSize: f.cfg.sector})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cd := &crashDisk{Device: d, crashAt: crashAt}
	res, err := f.dep.Deploy(context.Background(), f.j, cd)
	if err == nil && f.cfg.tail && !strings.HasPrefix(res.Staged, "disk tail") {
		t.Fatalf("staged in %q, want the disk tail", res.Staged)
	}
	if err == nil && f.cfg.qcow2 && res.Streamed != f.cfg.stream {
		t.Fatalf("streamed %v (staged in %q), want streamed %v", res.Streamed, res.Staged, f.cfg.stream)
	}
	return path, cd.ops, err
}

// TestCrashPoints is the harness.
func TestCrashPoints(t *testing.T) {
	full := *crashFull || os.Getenv("BYOI_CRASH_FULL") == "1"
	peers := testutil.Strict() || full
	total, tried := 0, 0
	for i, cfg := range crashConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			f := newCrashFixture(t, cfg)
			done, n, err := f.run(t, -1)
			if err != nil {
				t.Fatalf("the uncrashed deployment fails: %v", err)
			}
			refPath := filepath.Join(t.TempDir(), "finished.img")
			if b, err := os.ReadFile(done); err != nil {
				t.Fatal(err)
			} else if err := os.WriteFile(refPath, b, 0o644); err != nil {
				t.Fatal(err)
			}
			ref := crashcheck.ReadTable(t, refPath, cfg.sector)
			oldPath := crashcheck.OldSystem(t, cfg.sector, crashDiskSize)
			old := crashcheck.ReadTable(t, oldPath, cfg.sector)
			stride := 1
			if !full && i != 1 { // every point of raw-512-configdrive in CI, a sample of the others
				stride = max(n/6, 1)
			}
			states := map[string]int{}
			for at := 0; at < n; at += stride {
				path, _, err := f.run(t, at)
				if !errors.Is(err, errCrashed) {
					t.Fatalf("crash at %d of %d: deploy returned %v", at, n, err)
				}
				var uuid string
				if f.j.ConfigDrive != nil {
					uuid = configdrive.DeriveUUID(f.j.ImageURL + "\x00" + f.j.ConfigDrive.Hostname + "\x00" + f.path)
				}
				state := crashcheck.Check(t, path, []crashcheck.System{
					{Name: "complete", Path: refPath, Table: ref, UUID: uuid, Format: configdrive.FormatFor(cfg.sector)},
					{Name: "old system whole", Path: oldPath, Table: old},
				}, cfg.sector, peers && (full || at%(5*stride) == 0))
				states[state]++
				tried++
				if t.Failed() {
					t.Fatalf("crash at op %d of %d: %s", at, n, state)
				}
			}
			total += n
			t.Logf("%d operations, crash points tried: %v", n, states)
		})
	}
	t.Logf("crash-point harness: %d crash points tried of %d operations in %d configurations (full sweep: %v)", tried, total, len(crashConfigs()), full)
}
