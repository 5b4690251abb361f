package blockdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/byoi/byoi/internal/testutil"
)

// rootDisk finds, independently of the code under test, the whole disk
// holding "/" on this machine: stat("/").st_dev → /sys/dev/block/MAJ:MIN,
// up to the whole disk, down through dm/md slaves. It only reads.
func rootDisk(t *testing.T) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/", &st); err != nil {
		t.Fatal(err)
	}
	maj, min := unix.Major(st.Dev), unix.Minor(st.Dev)
	real, err := filepath.EvalSymlinks(filepath.Join("/sys/dev/block", fmt.Sprintf("%d:%d", maj, min)))
	if err != nil {
		testutil.Unavailable(t, "/ is not on a block device (%d:%d): %v", maj, min, err)
	}
	for i := 0; i < 8; i++ {
		if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
			real = filepath.Dir(real)
			continue
		}
		slaves, _ := os.ReadDir(filepath.Join(real, "slaves"))
		if len(slaves) == 0 {
			break
		}
		real, err = filepath.EvalSymlinks(filepath.Join(real, "slaves", slaves[0].Name()))
		if err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Base(real)
}

// TestRealMachineRootInUse reads the real /proc and /sys (never opening a
// disk) and checks the disk of the running system is refused.
func TestRealMachineRootInUse(t *testing.T) {
	disk := rootDisk(t)
	s := System{}
	reason, err := s.InUse(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reason, "running system") {
		t.Errorf("InUse(%s) = %q, want the running system named", disk, reason)
	}
	t.Logf("root disk %s: %s", disk, reason)
	r2, err := s.InUseByPath("/dev/" + disk)
	if err != nil || r2 != reason {
		t.Errorf("InUseByPath(/dev/%s) = %q, %v", disk, r2, err)
	}
	disks, err := s.Disks(ScanOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range disks {
		if d.Name == disk {
			found = true
			if !d.InUse {
				t.Errorf("Disks: root disk %s not in use", disk)
			}
		}
	}
	if !found {
		t.Errorf("Disks did not list the root disk %s", disk)
	}
	groups := MakeGroups(disks)
	for _, g := range groups {
		d, err := SelectDisk(groups, g.ID)
		if err == nil && d.Name == disk {
			t.Errorf("SelectDisk(%d) chose the root disk %s", g.ID, disk)
		}
		if g.Disks[0].Name == disk && !errors.Is(err, ErrInUse) {
			t.Errorf("SelectDisk(%d) on the root disk: %v", g.ID, err)
		}
	}
	if _, err := (System{}).FindConfigDriveLabels(disk); err != nil {
		t.Errorf("FindConfigDriveLabels: %v", err)
	}
}
