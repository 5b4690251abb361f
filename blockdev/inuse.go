package blockdev

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrInUse is wrapped by every refusal of a disk the running system uses
// (System.InUse reasons turned into errors, SelectDisk, Open on EBUSY).
var ErrInUse = errors.New("disk is in use")

// ErrNotFound is wrapped when a disk or device does not exist in sysfs.
var ErrNotFound = errors.New("no such disk")

// InUse tells whether the running system uses disk name (a whole disk,
// e.g. "sda"), and why. A disk is in use when it or one of its partitions
// backs the running root filesystem (following device-mapper and md
// holders down through slaves/), is mounted (matched by major:minor in
// mountinfo, and by source path for filesystems such as btrfs that report
// an anonymous device number), is active swap, or has holders
// (device-mapper, md, LVM, bcache). The reason is "" when the disk is free.
// A partition name is accepted and checked as its whole disk.
func (s System) InUse(name string) (reason string, err error) {
	u, err := s.usage()
	if err != nil {
		return "", err
	}
	disk, ok := u.diskOf[name]
	if !ok {
		return "", fmt.Errorf("disk %s: %w", name, ErrNotFound)
	}
	return u.reason(disk), nil
}

// usage is one snapshot of what the running system uses, built from
// sysfs, mountinfo and swaps, so a scan reads them once.
type usage struct {
	s      System
	devnum map[string]string   // "8:1" → "sda1" (disks, partitions, dm, md)
	diskOf map[string]string   // partition or disk name → whole disk name
	parts  map[string][]string // disk → its partitions
	mounts map[string][]string // device name → mount points
	swaps  map[string]bool     // device name → active swap
	root   map[string]string   // whole disk → what of it backs "/"
}

func (s System) usage() (*usage, error) {
	u := &usage{
		s:      s,
		devnum: map[string]string{},
		diskOf: map[string]string{},
		parts:  map[string][]string{},
		mounts: map[string][]string{},
		swaps:  map[string]bool{},
		root:   map[string]string{},
	}
	names, err := s.blockNames()
	if err != nil {
		return nil, err
	}
	dmNames := map[string]string{} // device-mapper name → dm-N
	for _, name := range names {
		dir := filepath.Join(s.sysRoot(), "block", name)
		u.diskOf[name] = name
		if dn := readString(filepath.Join(dir, "dev")); dn != "" {
			u.devnum[dn] = name
		}
		if dm := readString(filepath.Join(dir, "dm", "name")); dm != "" {
			dmNames[dm] = name
		}
		ents, err := listDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if _, err := os.Stat(filepath.Join(dir, e, "partition")); err != nil {
				continue
			}
			u.diskOf[e] = name
			u.parts[name] = append(u.parts[name], e)
			if dn := readString(filepath.Join(dir, e, "dev")); dn != "" {
				u.devnum[dn] = e
			}
		}
	}
	if err := u.readMounts(dmNames); err != nil {
		return nil, err
	}
	if err := u.readSwaps(dmNames); err != nil {
		return nil, err
	}
	return u, nil
}

// devName maps a device path from mountinfo or swaps (/dev/sda1,
// /dev/mapper/vg-root, /dev/disk/by-uuid/...) to a kernel name, or "".
func (u *usage) devName(source string, dmNames map[string]string) string {
	if !strings.HasPrefix(source, "/dev/") {
		return ""
	}
	rel := strings.TrimPrefix(source, "/dev/")
	if dm, ok := dmNames[strings.TrimPrefix(rel, "mapper/")]; ok && strings.HasPrefix(rel, "mapper/") {
		return dm
	}
	if real, err := filepath.EvalSymlinks(filepath.Join(u.s.devRoot(), rel)); err == nil {
		if _, ok := u.diskOf[filepath.Base(real)]; ok {
			return filepath.Base(real)
		}
	}
	if _, ok := u.diskOf[filepath.Base(rel)]; ok {
		return filepath.Base(rel)
	}
	return ""
}

// readMounts parses ProcRoot/self/mountinfo (proc(5)): field 3 is the
// major:minor of the mounted device, field 5 the mount point, and after the
// "-" separator come the filesystem type and the source.
func (u *usage) readMounts(dmNames map[string]string) error {
	path := filepath.Join(u.s.procRoot(), "self", "mountinfo")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		mnt := unescapeMount(f[4])
		names := map[string]bool{}
		if n, ok := u.devnum[f[2]]; ok {
			names[n] = true
		}
		if sep >= 0 && sep+2 < len(f) {
			if n := u.devName(unescapeMount(f[sep+2]), dmNames); n != "" {
				names[n] = true
			}
		}
		for n := range names {
			u.mounts[n] = append(u.mounts[n], mnt)
			if mnt == "/" {
				u.markRoot(n, n, 0)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	return nil
}

// markRoot records that device n (a disk, partition, dm or md device)
// backs the root filesystem mounted from top, following slaves/ down to
// the physical disks.
func (u *usage) markRoot(n, top string, depth int) {
	if depth > 16 { // a cycle in a (fake) sysfs tree
		return
	}
	disk, ok := u.diskOf[n]
	if !ok {
		return
	}
	var slaves []string
	if disk == n {
		slaves, _ = listDir(filepath.Join(u.s.sysRoot(), "block", n, "slaves"))
	}
	if len(slaves) == 0 {
		if _, ok := u.root[disk]; !ok {
			u.root[disk] = "the running system (/ is on " + top + ")"
		}
		return
	}
	for _, sl := range slaves {
		u.markRoot(sl, top, depth+1)
	}
}

// readSwaps parses ProcRoot/swaps: one active swap area per line after the
// header, its path first.
func (u *usage) readSwaps(dmNames map[string]string) error {
	b, err := os.ReadFile(filepath.Join(u.s.procRoot(), "swaps"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // kernel without swap support
	}
	if err != nil {
		return fmt.Errorf("read swaps: %w", err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			continue
		}
		if n := u.devName(unescapeMount(f[0]), dmNames); n != "" {
			u.swaps[n] = true
		}
	}
	return nil
}

// reason explains how the running system uses disk, or "".
func (u *usage) reason(disk string) string {
	var why []string
	if r, ok := u.root[disk]; ok {
		why = append(why, "holds "+r)
	}
	for _, n := range append([]string{disk}, u.parts[disk]...) {
		what := "disk " + n
		if n != disk {
			what = "partition " + n
		}
		for _, m := range u.mounts[n] {
			why = append(why, what+" is mounted at "+m)
		}
		if u.swaps[n] {
			why = append(why, what+" is active swap")
		}
		dir := filepath.Join(u.s.sysRoot(), "block", disk)
		if n != disk {
			dir = filepath.Join(dir, n)
		}
		holders, _ := listDir(filepath.Join(dir, "holders"))
		for _, h := range holders {
			why = append(why, what+" is held by "+u.describeHolder(h))
		}
	}
	return strings.Join(why, "; ")
}

// describeHolder names a holder: "dm-0 (device-mapper vg0-root)",
// "md0 (md RAID)", and where it is mounted or swapped.
func (u *usage) describeHolder(h string) string {
	dir := filepath.Join(u.s.sysRoot(), "block", h)
	var kind string
	switch {
	case readString(filepath.Join(dir, "dm", "name")) != "":
		kind = "device-mapper " + readString(filepath.Join(dir, "dm", "name"))
	case strings.HasPrefix(h, "dm-"):
		kind = "device-mapper"
	case strings.HasPrefix(h, "md"):
		kind = "md RAID"
		if lvl := readString(filepath.Join(dir, "md", "level")); lvl != "" {
			kind += " " + lvl
		}
	case strings.HasPrefix(h, "bcache"):
		kind = "bcache"
	}
	var use []string
	if kind != "" {
		use = append(use, kind)
	}
	for _, m := range u.mounts[h] {
		use = append(use, "mounted at "+m)
	}
	if u.swaps[h] {
		use = append(use, "active swap")
	}
	if len(use) == 0 {
		return h
	}
	return h + " (" + strings.Join(use, ", ") + ")"
}

// unescapeMount undoes the octal escapes (\040 for space, \011, \012,
// \134) the kernel uses in mountinfo and swaps.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
