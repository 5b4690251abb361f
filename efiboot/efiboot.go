// Package efiboot writes a UEFI boot entry for a deployed disk the way
// efibootmgr does, so that a server booted from the network can be sent to
// the image's own bootloader (for example \EFI\debian\grubx64.efi) when its
// network boot program exits.
//
// An entry is a Boot#### variable holding an EFI_LOAD_OPTION (UEFI 2.10
// §3.1.3): attributes LOAD_OPTION_ACTIVE, a UTF-16 description and the
// device path HD(partition number, GPT, partition GUID, start LBA, size in
// LBAs)/File(loader path)/End — the short-form ("abbreviated") hard drive
// path efibootmgr writes by default, which the firmware resolves by
// searching every disk for the partition GUID.
//
// Install puts the new entry into BootOrder directly after the entry the
// machine booted from (BootCurrent: the network entry when it was booted by
// PXE), moves disks that were before it behind the new entry, and never
// sets BootNext: the network stays first, so every later boot still asks
// the control plane what to do, and when its iPXE script exits the firmware
// moves on to the next BootOrder entry, which is the deployed disk. BootNext would be consumed by the first boot after the
// deployment and would skip the network for that boot only; BootOrder is
// needed anyway for every boot after it.
//
// Variables are read and written through an efivarfs directory
// (DefaultDir), or any directory laid out like one, so tests use a
// temporary directory. Writing needs root and, on efivarfs, clearing the
// immutable flag the kernel sets on Boot#### and BootOrder (as efibootmgr
// does with FS_IOC_SETFLAGS); that part is Linux-only.
package efiboot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

// DefaultDir is where efivarfs is mounted on Linux.
const DefaultDir = "/sys/firmware/efi/efivars"

// GlobalVariableGUID is EFI_GLOBAL_VARIABLE, the vendor GUID of Boot####,
// BootOrder, BootCurrent and BootNext.
const GlobalVariableGUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

// Variable attributes: the 4-byte prefix of every efivarfs file. Boot####
// and BootOrder are written with all three.
const (
	AttrNonVolatile   = 0x1
	AttrBootService   = 0x2
	AttrRuntimeAccess = 0x4
)

// LoadOptionActive is the LOAD_OPTION_ACTIVE bit of EFI_LOAD_OPTION.Attributes.
const LoadOptionActive = 0x1

const (
	attrBootVars         = AttrNonVolatile | AttrBootService | AttrRuntimeAccess
	maxDescriptionRunes  = 256
	maxLoaderPathRunes   = 1024
	hardDriveNodeLength  = 42
	mbrTypeGPT           = 0x02
	signatureTypeGUID    = 0x02
	devicePathTypeMedia  = 0x04
	mediaSubTypeHD       = 0x01
	mediaSubTypeFilePath = 0x04
	devicePathTypeMsg    = 0x03
	msgSubTypeMAC        = 0x0b
	devicePathTypeEnd    = 0x7f
	endSubTypeEntire     = 0xff
)

// Partition identifies the GPT partition holding the bootloader (normally
// the EFI System Partition of the deployed disk), as read from the disk's
// partition table.
type Partition struct {
	// Number is the GPT partition number: the entry index + 1, as sgdisk
	// and the kernel number partitions.
	Number uint32
	// GUID is the partition's unique GUID (not its type GUID) in the usual
	// text form, any case: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".
	GUID string
	// StartLBA and SizeLBA are the partition's first logical block and its
	// size in logical blocks of the disk's logical sector size.
	StartLBA, SizeLBA uint64
}

// Entry is one boot entry to create.
type Entry struct {
	// Description is what firmware boot menus show. Install deletes other
	// entries with the same description, so it should name byoi's entries
	// only (e.g. "byoi deployed image").
	Description string
	// Partition is the partition the loader is on.
	Partition Partition
	// LoaderPath is the loader's path inside that partition, e.g.
	// `\EFI\debian\grubx64.efi`. Forward slashes are turned into
	// backslashes and a leading backslash is added when missing.
	LoaderPath string
}

// LoadOption encodes e as an EFI_LOAD_OPTION with no optional data, byte for
// byte what `efibootmgr --create --disk D --part N --label DESC --loader PATH`
// stores in Boot####.
func LoadOption(e Entry) ([]byte, error) {
	desc, err := ucs2z(e.Description, maxDescriptionRunes, "description")
	if err != nil {
		return nil, err
	}
	dp, err := devicePath(e.Partition, e.LoaderPath)
	if err != nil {
		return nil, err
	}
	if len(dp) > 0xffff {
		return nil, errors.New("efiboot: device path too long")
	}
	b := make([]byte, 6, 6+len(desc)+len(dp))
	binary.LittleEndian.PutUint32(b[0:], LoadOptionActive)
	binary.LittleEndian.PutUint16(b[4:], uint16(len(dp)))
	b = append(b, desc...)
	return append(b, dp...), nil
}

// devicePath builds HD(...)/File(...)/End.
func devicePath(p Partition, loader string) ([]byte, error) {
	if p.Number == 0 {
		return nil, errors.New("efiboot: partition number must be 1 or more")
	}
	if p.SizeLBA == 0 {
		return nil, errors.New("efiboot: partition size must not be 0")
	}
	g, err := parseGUID(p.GUID)
	if err != nil {
		return nil, err
	}
	path, err := normalizeLoaderPath(loader)
	if err != nil {
		return nil, err
	}
	file, err := ucs2z(path, maxLoaderPathRunes, "loader path")
	if err != nil {
		return nil, err
	}
	var b []byte
	hd := make([]byte, hardDriveNodeLength)
	hd[0], hd[1] = devicePathTypeMedia, mediaSubTypeHD
	binary.LittleEndian.PutUint16(hd[2:], hardDriveNodeLength)
	binary.LittleEndian.PutUint32(hd[4:], p.Number)
	binary.LittleEndian.PutUint64(hd[8:], p.StartLBA)
	binary.LittleEndian.PutUint64(hd[16:], p.SizeLBA)
	copy(hd[24:40], g[:])
	hd[40], hd[41] = mbrTypeGPT, signatureTypeGUID
	b = append(b, hd...)
	fn := make([]byte, 4, 4+len(file))
	fn[0], fn[1] = devicePathTypeMedia, mediaSubTypeFilePath
	binary.LittleEndian.PutUint16(fn[2:], uint16(4+len(file)))
	b = append(b, append(fn, file...)...)
	return append(b, devicePathTypeEnd, endSubTypeEntire, 4, 0), nil
}

func normalizeLoaderPath(s string) (string, error) {
	s = strings.ReplaceAll(s, "/", `\`)
	if s == "" || strings.HasSuffix(s, `\`) {
		return "", fmt.Errorf("efiboot: loader path %q names no file", s)
	}
	if !strings.HasPrefix(s, `\`) {
		s = `\` + s
	}
	return s, nil
}

// ucs2z encodes s as NUL-terminated UTF-16LE.
func ucs2z(s string, max int, what string) ([]byte, error) {
	if strings.ContainsRune(s, 0) {
		return nil, fmt.Errorf("efiboot: %s contains a NUL character", what)
	}
	u := utf16.Encode([]rune(s))
	if len(u) > max {
		return nil, fmt.Errorf("efiboot: %s longer than %d characters", what, max)
	}
	b := make([]byte, 2*len(u)+2)
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b, nil
}

// parseGUID turns the text form into EFI_GUID bytes: the first three fields
// little-endian, the last two as written.
func parseGUID(s string) ([16]byte, error) {
	var g [16]byte
	h := strings.ReplaceAll(s, "-", "")
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' || len(h) != 32 {
		return g, fmt.Errorf("efiboot: malformed GUID %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return g, fmt.Errorf("efiboot: malformed GUID %q", s)
	}
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	if g == ([16]byte{}) {
		return g, errors.New("efiboot: partition GUID is all zeroes")
	}
	return g, nil
}

func formatGUID(g []byte) string {
	return fmt.Sprintf("%02X%02X%02X%02X-%02X%02X-%02X%02X-%X-%X",
		g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8:10], g[10:16])
}

// Option is a decoded EFI_LOAD_OPTION.
type Option struct {
	Attributes   uint32
	Description  string
	DevicePath   []byte // the whole FilePathList, End node included
	OptionalData []byte
}

// Active reports whether LOAD_OPTION_ACTIVE is set.
func (o Option) Active() bool { return o.Attributes&LoadOptionActive != 0 }

// Network reports whether the option boots from a network interface (its
// device path holds a MAC address node, as PXE and HTTP boot options do).
func (o Option) Network() bool {
	found := false
	walkDevicePath(o.DevicePath, func(t, st byte, _ []byte) {
		if t == devicePathTypeMsg && st == msgSubTypeMAC {
			found = true
		}
	})
	return found
}

// ParseLoadOption decodes an EFI_LOAD_OPTION (a Boot#### value without the
// efivarfs attribute prefix).
func ParseLoadOption(b []byte) (Option, error) {
	var o Option
	if len(b) < 8 {
		return o, errors.New("efiboot: load option too short")
	}
	o.Attributes = binary.LittleEndian.Uint32(b)
	n := int(binary.LittleEndian.Uint16(b[4:]))
	i := 6
	var u []uint16
	for ; ; i += 2 {
		if i+2 > len(b) {
			return o, errors.New("efiboot: load option description not terminated")
		}
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			i += 2
			break
		}
		u = append(u, c)
	}
	o.Description = string(utf16.Decode(u))
	if n > len(b)-i {
		return o, errors.New("efiboot: load option device path runs past its end")
	}
	o.DevicePath = b[i : i+n]
	o.OptionalData = b[i+n:]
	return o, nil
}

// walkDevicePath calls f for every node until the end of the first
// instance or a malformed node.
func walkDevicePath(dp []byte, f func(t, st byte, data []byte)) {
	for len(dp) >= 4 {
		t, st := dp[0], dp[1]
		l := int(binary.LittleEndian.Uint16(dp[2:]))
		if l < 4 || l > len(dp) || t == devicePathTypeEnd {
			return
		}
		f(t, st, dp[4:l])
		dp = dp[l:]
	}
}

// DevicePathString renders a device path the way efibootmgr -v and the UEFI
// shell do for the nodes this package writes, e.g.
// HD(1,GPT,<guid>,0x800,0x100000)/File(\EFI\debian\grubx64.efi); other
// nodes are shown as Node(type,subtype).
func DevicePathString(dp []byte) string {
	var parts []string
	walkDevicePath(dp, func(t, st byte, d []byte) {
		switch {
		case t == devicePathTypeMedia && st == mediaSubTypeHD && len(d) == hardDriveNodeLength-4:
			if d[36] == mbrTypeGPT && d[37] == signatureTypeGUID {
				parts = append(parts, fmt.Sprintf("HD(%d,GPT,%s,%#x,%#x)", binary.LittleEndian.Uint32(d),
					formatGUID(d[20:36]), binary.LittleEndian.Uint64(d[4:]), binary.LittleEndian.Uint64(d[12:])))
			} else {
				parts = append(parts, fmt.Sprintf("HD(%d,MBR,%#x,%#x,%#x)", binary.LittleEndian.Uint32(d),
					binary.LittleEndian.Uint32(d[20:]), binary.LittleEndian.Uint64(d[4:]), binary.LittleEndian.Uint64(d[12:])))
			}
		case t == devicePathTypeMedia && st == mediaSubTypeFilePath:
			u := make([]uint16, 0, len(d)/2)
			for i := 0; i+1 < len(d); i += 2 {
				c := binary.LittleEndian.Uint16(d[i:])
				if c == 0 {
					break
				}
				u = append(u, c)
			}
			parts = append(parts, "File("+string(utf16.Decode(u))+")")
		case t == devicePathTypeMsg && st == msgSubTypeMAC && len(d) >= 33:
			parts = append(parts, fmt.Sprintf("MAC(%x,%#x)", d[:6], d[32]))
		default:
			parts = append(parts, fmt.Sprintf("Node(%d,%d)", t, st))
		}
	})
	return strings.Join(parts, "/")
}

// Vars reads and writes UEFI global variables in an efivarfs directory.
type Vars struct {
	Dir string // efivarfs mount point; "" means DefaultDir
}

func (v Vars) dir() string {
	if v.Dir == "" {
		return DefaultDir
	}
	return v.Dir
}

func (v Vars) path(name string) string {
	return filepath.Join(v.dir(), name+"-"+GlobalVariableGUID)
}

// Get returns a global variable's value without its attribute prefix.
// A missing variable is an error satisfying errors.Is(err, fs.ErrNotExist).
func (v Vars) Get(name string) ([]byte, error) {
	b, err := os.ReadFile(v.path(name))
	if err != nil {
		return nil, err
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("efiboot: variable %s is shorter than its attributes", name)
	}
	return b[4:], nil
}

// Set writes a global variable (non-volatile, boot service and runtime
// access) in one write, as efivarfs requires, clearing the immutable flag
// first.
func (v Vars) Set(name string, value []byte) error {
	p := v.path(name)
	if err := makeMutable(p); err != nil {
		return fmt.Errorf("efiboot: %s: %w", name, err)
	}
	flags := os.O_WRONLY | os.O_CREATE
	if !isEfivarfs(v.dir()) {
		flags |= os.O_TRUNC // a plain directory (tests): efivarfs replaces the value itself
	}
	f, err := os.OpenFile(p, flags, 0o644)
	if err != nil {
		return fmt.Errorf("efiboot: %s: %w", name, err)
	}
	buf := make([]byte, 4, 4+len(value))
	binary.LittleEndian.PutUint32(buf, attrBootVars)
	buf = append(buf, value...)
	n, err := f.Write(buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != len(buf) {
		err = errors.New("short write")
	}
	if err != nil {
		return fmt.Errorf("efiboot: writing %s: %w", name, err)
	}
	return nil
}

// Delete removes a global variable; a missing one is not an error.
func (v Vars) Delete(name string) error {
	p := v.path(name)
	if err := makeMutable(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("efiboot: %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("efiboot: deleting %s: %w", name, err)
	}
	return nil
}

// BootOrder returns BootOrder (empty when it does not exist).
func (v Vars) BootOrder() ([]uint16, error) {
	return v.getU16s("BootOrder")
}

// SetBootOrder writes BootOrder.
func (v Vars) SetBootOrder(order []uint16) error {
	b := make([]byte, 2*len(order))
	for i, n := range order {
		binary.LittleEndian.PutUint16(b[2*i:], n)
	}
	return v.Set("BootOrder", b)
}

// BootCurrent returns the number of the entry the machine booted from.
func (v Vars) BootCurrent() (uint16, bool, error) {
	s, err := v.getU16s("BootCurrent")
	if err != nil || len(s) != 1 {
		return 0, false, err
	}
	return s[0], true, nil
}

// SetBootNext makes the next boot, and only that one, use entry num.
// Install does not use it (see the package comment).
func (v Vars) SetBootNext(num uint16) error {
	return v.Set("BootNext", binary.LittleEndian.AppendUint16(nil, num))
}

func (v Vars) getU16s(name string) ([]uint16, error) {
	b, err := v.Get(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("efiboot: %s has an odd length %d", name, len(b))
	}
	s := make([]uint16, len(b)/2)
	for i := range s {
		s[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return s, nil
}

// BootName returns the variable name of entry num, e.g. "Boot0007".
func BootName(num uint16) string { return fmt.Sprintf("Boot%04X", num) }

// Entries returns every Boot#### entry in the directory, decoded, by number.
// Entries that do not decode are returned with a zero Option and their
// error, so callers can skip them.
func (v Vars) Entries() (map[uint16]Option, error) {
	des, err := os.ReadDir(v.dir())
	if err != nil {
		return nil, fmt.Errorf("efiboot: %w", err)
	}
	out := map[uint16]Option{}
	suffix := "-" + GlobalVariableGUID
	for _, de := range des {
		name := de.Name()
		if len(name) != len("Boot0000")+len(suffix) || !strings.HasPrefix(name, "Boot") ||
			!strings.EqualFold(name[8:], suffix) {
			continue
		}
		n, err := strconv.ParseUint(name[4:8], 16, 16)
		if err != nil {
			continue
		}
		b, err := v.Get(name[:8])
		if err != nil {
			continue
		}
		o, err := ParseLoadOption(b)
		if err != nil {
			continue
		}
		out[uint16(n)] = o
	}
	return out, nil
}

// placeAfterNetwork returns order with num inserted so that it comes right
// after the network entry the machine booted from (cur) and after every
// network entry before it; non-network entries that were before cur move
// behind num. When cur is not a network entry in order, num goes after the
// leading run of network entries (first when there is none).
func placeAfterNetwork(order []uint16, num uint16, entries map[uint16]Option, cur uint16, haveCur bool) []uint16 {
	isNet := func(n uint16) bool {
		o, ok := entries[n]
		return ok && o.Network()
	}
	k := -1
	if haveCur && isNet(cur) {
		for i, n := range order {
			if n == cur {
				k = i
				break
			}
		}
	}
	var head, tail []uint16
	if k >= 0 {
		for i, n := range order {
			if i <= k && isNet(n) {
				head = append(head, n)
			} else {
				tail = append(tail, n)
			}
		}
	} else {
		i := 0
		for i < len(order) && isNet(order[i]) {
			i++
		}
		head, tail = order[:i], order[i:]
	}
	out := make([]uint16, 0, len(order)+1)
	out = append(out, head...)
	out = append(out, num)
	return append(out, tail...)
}

// Installed describes what Install did.
type Installed struct {
	Num       uint16   // the Boot#### number used
	Reused    bool     // an identical entry existed and was kept
	Removed   []uint16 // stale entries with the same description, deleted
	BootOrder []uint16 // BootOrder as written
}

// Install writes e as a Boot#### entry and puts it into BootOrder:
//
//   - an existing entry with the same device path (same partition and
//     loader) is reused and rewritten; other entries with the same
//     description (left by earlier deployments) are deleted;
//   - when BootCurrent (the entry the rescue system was booted from) is a
//     network entry in BootOrder, the new entry is placed right after it,
//     and entries that are not network entries but came before it (disks
//     that failed to boot: blank, or a previous system's) are moved behind
//     the new entry, so that every later boot starts from the network and,
//     when iPXE exits, goes on to the deployed disk;
//   - otherwise the entry is placed after the leading run of network
//     entries (first when BootOrder starts with none);
//   - the relative order of all other entries is kept; BootNext is left
//     alone.
//
// Variables are written in an order that never leaves BootOrder naming an
// entry that does not exist: Boot#### first, then BootOrder, then deletions.
func Install(dir string, e Entry) (Installed, error) {
	var res Installed
	opt, err := LoadOption(e)
	if err != nil {
		return res, err
	}
	v := Vars{Dir: dir}
	entries, err := v.Entries()
	if err != nil {
		return res, err
	}
	order, err := v.BootOrder()
	if err != nil {
		return res, err
	}
	cur, haveCur, err := v.BootCurrent()
	if err != nil {
		return res, err
	}
	want, _ := ParseLoadOption(opt)

	nums := make([]uint16, 0, len(entries))
	for n := range entries {
		nums = append(nums, n)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	found := false
	for _, n := range nums {
		o := entries[n]
		if !found && bytes.Equal(o.DevicePath, want.DevicePath) {
			res.Num, res.Reused, found = n, true, true
			continue
		}
		if o.Description == e.Description && !(haveCur && n == cur) {
			res.Removed = append(res.Removed, n)
		}
	}
	if !found {
		free := false
		for n := 0; n <= 0xffff; n++ {
			if _, used := entries[uint16(n)]; !used {
				res.Num, free = uint16(n), true
				break
			}
		}
		if !free {
			return res, errors.New("efiboot: no free Boot#### number")
		}
	}
	if err := v.Set(BootName(res.Num), opt); err != nil {
		return res, err
	}

	removed := map[uint16]bool{res.Num: true}
	for _, n := range res.Removed {
		removed[n] = true
	}
	var rest []uint16
	for _, n := range order {
		if !removed[n] {
			rest = append(rest, n)
		}
	}
	newOrder := placeAfterNetwork(rest, res.Num, entries, cur, haveCur)
	if err := v.SetBootOrder(newOrder); err != nil {
		return res, err
	}
	res.BootOrder = newOrder
	for _, n := range res.Removed {
		if err := v.Delete(BootName(n)); err != nil {
			return res, err
		}
	}
	return res, nil
}
