package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/internal/crashcheck"
	"github.com/byoi/byoi/internal/testutil"
)

// TestKill9Deploy: the crash-point harness's sample of real kills. `byoi
// deploy` writes an image with a ConfigDrive onto a disk holding an old
// bootable system, from a slowed server, and is killed with SIGKILL at
// points spread over its run (while the old tables are cleared, while
// the image streams, while the tables are committed); each time the disk
// shows nothing, the old system whole, or the complete new one.
func TestKill9Deploy(t *testing.T) {
	t.Parallel()
	build(t)
	testutil.RequireCommand(t, "sfdisk", "blkid", "sgdisk")
	const size = 64 * mib
	for _, typ := range []string{"raw", "qcow2"} {
		t.Run(typ, func(t *testing.T) {
			img := serveImage(t, 24*mib, typ == "qcow2", "")
			img.delay = 4 * time.Millisecond
			oldPath := crashcheck.OldSystem(t, 512, size)
			old, err := os.ReadFile(oldPath)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "disk.img") // one path: the ConfigDrive's uuid derives from it
			args := []string{"deploy", "--url", img.url, "--type", typ, "--checksum", img.sum, "--checksum-type", "sha256",
				"--hostname", "k9", "--ssh-key", sshKey, "--disk", path, "--memory-reserve", "0"}
			fresh := func() {
				if err := os.WriteFile(path, old, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// The finished system, and how long a deployment takes.
			fresh()
			begin := time.Now()
			p := start(t, bins.byoi, args...)
			if code := p.wait(t, 2*time.Minute); code != 0 {
				t.Fatalf("deploy exit %d:\n%s", code, p.out.String())
			}
			took := time.Since(begin)
			ref := filepath.Join(t.TempDir(), "finished.img")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(ref, b, 0o644); err != nil {
				t.Fatal(err)
			}
			systems := []crashcheck.System{
				{Name: "complete", Path: ref, Table: crashcheck.ReadTable(t, ref, 512),
					UUID: configdrive.DeriveUUID(img.url + "\x00k9\x00" + path), Format: configdrive.ISO9660},
				{Name: "old system whole", Path: oldPath, Table: crashcheck.ReadTable(t, oldPath, 512)},
			}
			states := map[string]int{}
			const points = 8
			for i := 1; i <= points; i++ {
				fresh()
				p := start(t, bins.byoi, args...)
				var at time.Duration
				if i%2 == 1 {
					// Spread over the whole run.
					at = took * time.Duration(i) / (points + 1)
					time.Sleep(at)
				} else {
					// Just after the download: the writes of a qcow2
					// conversion, the tables of a raw image, the commit.
					for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && !strings.Contains(p.out.String(), "verify:"); {
						time.Sleep(2 * time.Millisecond)
					}
					at = time.Duration(i-2) * 15 * time.Millisecond
					time.Sleep(at)
				}
				p.kill()
				state := crashcheck.Check(t, path, systems, 512, true)
				states[state]++
				if t.Failed() {
					t.Fatalf("kill -9 after %s of %s: %s\n%s", at, took, state, tail(p.out.String(), 10))
				}
			}
			t.Logf("deploy takes %s; kill -9 at %d points: %v", took.Round(time.Millisecond), points, states)
		})
	}
}
