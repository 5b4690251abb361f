package ova

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/byoi/byoi/imaging/vmdk"
)

// OVF envelope namespaces (DMTF DSP0243): OVF 1.x, which VirtualBox and
// VMware write, and OVF 2.x.
const (
	ns1 = "http://schemas.dmtf.org/ovf/envelope/1"
	ns2 = "http://schemas.dmtf.org/ovf/envelope/2"
)

// resourceDisk is the CIM ResourceType of a disk drive (DSP0243 and the
// CIM_ResourceAllocationSettingData schema: 17 = "Disk Drive").
const resourceDisk = "17"

// ErrRefused is matched (errors.Is) by every refusal of an OVA package: its
// archive, its OVF descriptor or the choice of its disk. Refusals of the
// disk image itself are *vmdk.Error, of the manifest *ManifestError.
var ErrRefused = errors.New("ova image refused")

// Error is an OVA package byoi refuses, with the reason; Member names
// the archive member concerned, when there is one.
type Error struct {
	Member string
	Reason string
	Err    error
}

func (e *Error) Error() string {
	reason := ""
	if e.Member != "" {
		reason = fmt.Sprintf("%q: ", e.Member)
	}
	reason += e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	return "OVA image refused: " + reason
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *Error) Is(target error) bool { return target == ErrRefused }

func (e *Error) Unwrap() error { return e.Err }

func refuse(member, format string, args ...any) error {
	return &Error{Member: member, Reason: fmt.Sprintf(format, args...)}
}

// File is a file of the package (References/File).
type File struct {
	ID   string
	Href string
	// Size is ovf:size in bytes, -1 when absent.
	Size int64
	// Compression is ovf:compression: "" (none) or "gzip".
	Compression string
}

// Disk is a virtual disk (DiskSection/Disk).
type Disk struct {
	ID      string
	FileRef string
	// Format is the ovf:format URL.
	Format string
	// CreateType is the VMDK type the format names
	// (vmdk.StreamOptimized or vmdk.MonolithicSparse), "" for others.
	CreateType string
	// Capacity is ovf:capacity in bytes, -1 when it cannot be read.
	Capacity int64
}

// OVF is what byoi reads from an OVF descriptor.
type OVF struct {
	// Version is "1" or "2" (the envelope namespace).
	Version string
	Files   []File
	Disks   []Disk
	// Boot is the disk to deploy: the only disk, or the one the first
	// virtual system boots from; BootFile is its file.
	Boot     Disk
	BootFile File
	// Warnings are things the customer should know: disks not deployed,
	// oddities that did not prevent the deployment.
	Warnings []string
}

// File returns the file with the given href.
func (o *OVF) File(href string) (File, bool) {
	for _, f := range o.Files {
		if f.Href == href {
			return f, true
		}
	}
	return File{}, false
}

// The XML shapes byoi reads. Elements and attributes are matched by local
// name, whatever their prefix: VirtualBox, VMware (ovftool) and OVF 2.0
// producers bind ovf:, rasd:, sasd: and the default namespace differently.
type xmlEnvelope struct {
	XMLName      xml.Name
	Files        []xmlFile        `xml:"References>File"`
	DiskSections []xmlDiskSection `xml:"DiskSection"`
	Systems      []xmlSystem      `xml:"VirtualSystem"`
	Collections  []xmlCollection  `xml:"VirtualSystemCollection"`
}

type xmlFile struct {
	ID          string `xml:"id,attr"`
	Href        string `xml:"href,attr"`
	Size        string `xml:"size,attr"`
	Compression string `xml:"compression,attr"`
	ChunkSize   string `xml:"chunkSize,attr"`
}

type xmlDiskSection struct {
	Disks []xmlDisk `xml:"Disk"`
}

type xmlDisk struct {
	DiskID    string `xml:"diskId,attr"`
	FileRef   string `xml:"fileRef,attr"`
	Capacity  string `xml:"capacity,attr"`
	Units     string `xml:"capacityAllocationUnits,attr"`
	Format    string `xml:"format,attr"`
	ParentRef string `xml:"parentRef,attr"`
}

type xmlCollection struct {
	Systems []xmlSystem `xml:"VirtualSystem"`
}

type xmlSystem struct {
	ID       string        `xml:"id,attr"`
	Hardware []xmlHardware `xml:"VirtualHardwareSection"`
}

type xmlHardware struct {
	// Items keeps every child in document order: Item (rasd:) and, in
	// OVF 2.0, StorageItem (sasd:) describe disks and controllers.
	Items []xmlItem `xml:",any"`
}

type xmlItem struct {
	XMLName         xml.Name
	ResourceType    string   `xml:"ResourceType"`
	HostResource    []string `xml:"HostResource"`
	InstanceID      string   `xml:"InstanceID"`
	Parent          string   `xml:"Parent"`
	AddressOnParent string   `xml:"AddressOnParent"`
	ElementName     string   `xml:"ElementName"`
}

// maxDescriptor bounds the OVF descriptor (real ones are tens of KiB).
const maxDescriptor = 16 << 20

// ParseOVF parses an OVF descriptor (at most 16 MiB) and decides which disk
// to deploy: the only one, or the one the first virtual system boots from
// (see bootDisk). It refuses descriptors it cannot decide for, disks that
// are not sparse or stream-optimized VMDKs, files outside the package, and
// delta disks, with an *Error.
func ParseOVF(data []byte) (*OVF, error) {
	if len(data) > maxDescriptor {
		return nil, refuse("", "OVF descriptor of %d bytes is larger than %d", len(data), maxDescriptor)
	}
	var env xmlEnvelope
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&env); err != nil {
		return nil, &Error{Reason: "OVF descriptor is not valid XML", Err: err}
	}
	info := &OVF{}
	switch {
	case env.XMLName.Local != "Envelope":
		return nil, refuse("", "OVF descriptor's root element is %.40q, not Envelope", env.XMLName.Local)
	case env.XMLName.Space == ns1:
		info.Version = "1"
	case env.XMLName.Space == ns2:
		info.Version = "2"
	default:
		return nil, refuse("", "OVF envelope namespace %.80q is not OVF 1 or 2 (%s)", env.XMLName.Space, ns1)
	}

	ids := map[string]bool{}
	hrefs := map[string]bool{}
	for _, f := range env.Files {
		file := File{ID: f.ID, Href: cleanName(f.Href), Size: -1, Compression: f.Compression}
		if file.ID == "" || ids[file.ID] {
			return nil, refuse("", "OVF References has a file with an empty or repeated id %.40q", file.ID)
		}
		ids[file.ID] = true
		if hrefs[file.Href] {
			return nil, refuse("", "OVF References lists file %.80q twice", file.Href)
		}
		hrefs[file.Href] = true
		if f.Size != "" {
			n, err := strconv.ParseInt(strings.TrimSpace(f.Size), 10, 64)
			if err != nil || n < 0 {
				return nil, refuse("", "OVF file %.40q has an invalid ovf:size %.40q", f.ID, f.Size)
			}
			file.Size = n
		}
		if f.ChunkSize != "" && f.ChunkSize != "0" {
			return nil, refuse("", "OVF file %.40q is split in chunks (ovf:chunkSize), which byoi does not read", f.ID)
		}
		info.Files = append(info.Files, file)
	}

	diskIDs := map[string]bool{}
	for _, ds := range env.DiskSections {
		for _, d := range ds.Disks {
			disk := Disk{ID: d.DiskID, FileRef: d.FileRef, Format: d.Format, Capacity: -1}
			if disk.ID == "" || diskIDs[disk.ID] {
				return nil, refuse("", "OVF DiskSection has a disk with an empty or repeated id %.40q", disk.ID)
			}
			diskIDs[disk.ID] = true
			disk.CreateType = diskSubformat(d.Format)
			if c, err := parseCapacity(d.Capacity, d.Units); err == nil {
				disk.Capacity = c
			} else {
				info.Warnings = append(info.Warnings, fmt.Sprintf("disk %s: %v", disk.ID, err))
			}
			if d.ParentRef != "" {
				// Kept to refuse it if it is the one to deploy.
				disk.CreateType = "delta of " + d.ParentRef
			}
			info.Disks = append(info.Disks, disk)
		}
	}
	if len(info.Disks) == 0 {
		return nil, refuse("", "OVF descriptor describes no disk")
	}

	var sys *xmlSystem
	switch {
	case len(env.Systems) > 0:
		sys = &env.Systems[0]
	case len(env.Collections) > 0 && len(env.Collections[0].Systems) > 0:
		sys = &env.Collections[0].Systems[0]
		info.Warnings = append(info.Warnings, fmt.Sprintf("the package holds a collection of virtual systems: only %q is considered", sys.ID))
	}
	hrefOf := map[string]string{}
	for _, f := range info.Files {
		hrefOf[f.ID] = f.Href
	}
	boot, warn, err := bootDisk(info.Disks, sys, hrefOf)
	if err != nil {
		return nil, err
	}
	info.Warnings = append(info.Warnings, warn...)
	info.Boot = boot
	if strings.HasPrefix(boot.CreateType, "delta of ") {
		return nil, refuse("", "disk %.40q is a delta of disk %.40q (ovf:parentRef), which byoi does not assemble", boot.ID, strings.TrimPrefix(boot.CreateType, "delta of "))
	}
	if boot.CreateType == "" {
		return nil, refuse("", "disk %.40q has format %.120q: byoi deploys VMDK disks (streamOptimized or monolithicSparse)", boot.ID, boot.Format)
	}
	if boot.FileRef == "" {
		return nil, refuse("", "disk %.40q has no file (an empty disk to create): nothing to deploy", boot.ID)
	}
	found := false
	for _, f := range info.Files {
		if f.ID == boot.FileRef {
			info.BootFile, found = f, true
		}
	}
	if !found {
		return nil, refuse("", "disk %.40q refers to file %.40q, which References does not list", boot.ID, boot.FileRef)
	}
	bf := info.BootFile
	if !vmdk.PlainName(bf.Href) {
		return nil, refuse("", "disk %.40q is file %.120q, not a plain name inside the package: byoi never opens or fetches other files", boot.ID, bf.Href)
	}
	switch bf.Compression {
	case "", "identity":
		info.BootFile.Compression = ""
	case "gzip":
	default:
		return nil, refuse("", "disk file %.80q has compression %.40q (byoi reads gzip)", bf.Href, bf.Compression)
	}
	for _, f := range info.Files {
		if f.ID != bf.ID && !vmdk.PlainName(f.Href) {
			info.Warnings = append(info.Warnings, fmt.Sprintf("file %q is outside the package and is ignored", f.Href))
		}
	}
	return info, nil
}

// cleanName drops a leading "./" (tar run in the package's directory).
func cleanName(name string) string { return strings.TrimPrefix(name, "./") }

// diskSubformat maps a DiskSection ovf:format URL to the VMDK create type it
// names: http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized
// (and the older #compressed) and ...#sparse (monolithicSparse). "" for any
// other format.
func diskSubformat(format string) string {
	f := strings.ToLower(strings.TrimSpace(format))
	i := strings.Index(f, "vmdk.html#")
	if i < 0 || !strings.Contains(f[:i], "vmware.com/") {
		return ""
	}
	switch f[i+len("vmdk.html#"):] {
	case "streamoptimized", "compressed":
		return vmdk.StreamOptimized
	case "sparse":
		return vmdk.MonolithicSparse
	}
	return ""
}

// parseCapacity reads ovf:capacity in ovf:capacityAllocationUnits
// (DSP0004 programmatic units: "byte", "byte * 2^30", "byte * 10^9",
// "byte * 1024^3"; absent means bytes).
func parseCapacity(value, units string) (int64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 63)
	if err != nil {
		return 0, fmt.Errorf("capacity %.40q is not a number", value)
	}
	u := strings.ReplaceAll(units, " ", "")
	mult := uint64(1)
	if u != "" && u != "byte" {
		rest, ok := strings.CutPrefix(u, "byte*")
		if !ok {
			return 0, fmt.Errorf("capacity unit %.40q is not understood", units)
		}
		b, e, ok := strings.Cut(rest, "^")
		base, err1 := strconv.ParseUint(b, 10, 16)
		exp, err2 := strconv.ParseUint(e, 10, 8)
		if !ok || err1 != nil || err2 != nil || base < 2 {
			return 0, fmt.Errorf("capacity unit %.40q is not understood", units)
		}
		for range exp {
			hi, lo := bits.Mul64(mult, base)
			if hi != 0 || lo > 1<<62 {
				return 0, fmt.Errorf("capacity unit %.40q is too large", units)
			}
			mult = lo
		}
	}
	hi, lo := bits.Mul64(v, mult)
	if hi != 0 || lo > 1<<62 {
		return 0, fmt.Errorf("capacity %s %s is too large", value, units)
	}
	return int64(lo), nil
}

// bootDisk decides which disk to deploy. One disk: that one. Several:
// the one the first virtual system boots from, as its firmware would find
// it: among the disk drives (ResourceType 17) of its first
// VirtualHardwareSection, the one on the controller listed first, at the
// lowest AddressOnParent (VirtualBox writes the port, VMware the unit
// number). When that does not single out one disk the package is refused:
// deploying the wrong disk would leave a server that does not boot.
func bootDisk(disks []Disk, sys *xmlSystem, hrefOf map[string]string) (Disk, []string, error) {
	var warn []string
	others := func(boot Disk) []string {
		for _, d := range disks {
			if d.ID != boot.ID {
				warn = append(warn, fmt.Sprintf("disk %s (%q) is not deployed: only the boot disk %s (%q) is", d.ID, hrefOf[d.FileRef], boot.ID, hrefOf[boot.FileRef]))
			}
		}
		return warn
	}
	if len(disks) == 1 {
		return disks[0], nil, nil
	}
	if sys == nil || len(sys.Hardware) == 0 {
		return Disk{}, nil, refuse("", "%d disks and no virtual hardware to tell which one boots", len(disks))
	}
	if len(sys.Hardware) > 1 {
		warn = append(warn, "several VirtualHardwareSections: the first one decides the boot disk")
	}
	items := sys.Hardware[0].Items
	ctrl := map[string]int{} // controller InstanceID -> document position
	for i, it := range items {
		if it.InstanceID != "" {
			if _, dup := ctrl[it.InstanceID]; !dup {
				ctrl[it.InstanceID] = i
			}
		}
	}
	type attached struct {
		disk       Disk
		ctrl, addr int
		item       int
		hasAddr    bool
	}
	var att []attached
	seen := map[string]bool{}
	for i, it := range items {
		if (it.XMLName.Local != "Item" && it.XMLName.Local != "StorageItem") || strings.TrimSpace(it.ResourceType) != resourceDisk {
			continue
		}
		for _, hr := range it.HostResource {
			id, ok := diskRef(hr)
			if !ok {
				continue
			}
			k := slices.IndexFunc(disks, func(d Disk) bool { return d.ID == id })
			if k < 0 {
				return Disk{}, nil, refuse("", "disk drive %.40q refers to disk %.40q, which DiskSection does not list", it.ElementName, id)
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			a := attached{disk: disks[k], ctrl: len(items), item: i}
			if p, ok := ctrl[strings.TrimSpace(it.Parent)]; ok && it.Parent != "" {
				a.ctrl = p
			}
			if n, err := strconv.Atoi(strings.TrimSpace(it.AddressOnParent)); err == nil && n >= 0 {
				a.addr, a.hasAddr = n, true
			}
			att = append(att, a)
		}
	}
	if len(att) == 0 {
		return Disk{}, nil, refuse("", "%d disks and the virtual system attaches none of them: cannot tell which one boots", len(disks))
	}
	slices.SortStableFunc(att, func(a, b attached) int {
		if a.ctrl != b.ctrl {
			return a.ctrl - b.ctrl
		}
		if a.hasAddr != b.hasAddr {
			if a.hasAddr {
				return -1
			}
			return 1
		}
		if a.addr != b.addr {
			return a.addr - b.addr
		}
		return a.item - b.item
	})
	if len(att) > 1 && att[0].ctrl == att[1].ctrl && att[0].hasAddr == att[1].hasAddr && att[0].addr == att[1].addr {
		return Disk{}, nil, refuse("", "cannot tell which disk boots: disks %.40q and %.40q sit on the same controller at the same address", att[0].disk.ID, att[1].disk.ID)
	}
	return att[0].disk, others(att[0].disk), nil
}

// diskRef reads a HostResource naming a disk: "ovf:/disk/<id>" (the
// standard form) or "/disk/<id>" (VirtualBox).
func diskRef(hr string) (string, bool) {
	hr = strings.TrimSpace(hr)
	hr = strings.TrimPrefix(hr, "ovf:")
	id, ok := strings.CutPrefix(hr, "/disk/")
	return id, ok && id != ""
}
