package testimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"
)

// OVFStyle is the producer whose OVF descriptor layout is imitated.
type OVFStyle int

const (
	// VirtualBox writes OVF 1.0 with HostResource "/disk/<id>", disks on a
	// SATA controller (ResourceType 20) at AddressOnParent = port, no
	// ovf:size, capacities in bytes, and the manifest last in the OVA.
	VirtualBox OVFStyle = iota
	// VMware (ovftool) writes OVF 1.0 with HostResource
	// "ovf:/disk/<id>", disks on a SCSI controller (ResourceType 6),
	// ovf:size on files, capacities in "byte * 2^20" or "byte * 2^30"
	// units, and the manifest right after the descriptor.
	VMware
	// OVF2 writes an OVF 2.0 envelope with StorageItem disk drives.
	OVF2
)

// Format URLs of VMDK disks in OVF descriptors.
const (
	FormatStreamOptimized = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
	FormatSparse          = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"
)

// OVFDisk is a disk of a generated OVF descriptor.
type OVFDisk struct {
	ID       string // disk id (default vmdiskN)
	File     string // file href (and file id fileN)
	FileSize int64  // ovf:size; 0: omitted
	Capacity int64  // bytes
	Format   string // default FormatStreamOptimized
	// Controller is the index of the controller (0 or 1) the disk is on;
	// Address its AddressOnParent (-1: omitted). Detached disks are in
	// DiskSection only.
	Controller int
	Address    int
	Detached   bool
	// Compression is ovf:compression ("" or "gzip").
	Compression string
}

// OVF returns an OVF descriptor for disks in the given style.
func OVF(style OVFStyle, disks []OVFDisk) []byte {
	var b strings.Builder
	ns := "http://schemas.dmtf.org/ovf/envelope/1"
	if style == OVF2 {
		ns = "http://schemas.dmtf.org/ovf/envelope/2"
	}
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="%[1]s" xmlns:ovf="%[1]s" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
`, ns)
	for i, d := range disks {
		fmt.Fprintf(&b, `    <File ovf:id="file%d" ovf:href="%s"`, i+1, d.File)
		if d.FileSize > 0 {
			fmt.Fprintf(&b, ` ovf:size="%d"`, d.FileSize)
		}
		if d.Compression != "" {
			fmt.Fprintf(&b, ` ovf:compression="%s"`, d.Compression)
		}
		b.WriteString("/>\n")
	}
	b.WriteString("  </References>\n  <DiskSection>\n    <Info>List of the virtual disks used in the package</Info>\n")
	for i, d := range disks {
		format := d.Format
		if format == "" {
			format = FormatStreamOptimized
		}
		capacity, units := fmt.Sprint(d.Capacity), ""
		if style == VMware {
			switch {
			case d.Capacity%(1<<30) == 0:
				capacity, units = fmt.Sprint(d.Capacity>>30), ` ovf:capacityAllocationUnits="byte * 2^30"`
			case d.Capacity%(1<<20) == 0:
				capacity, units = fmt.Sprint(d.Capacity>>20), ` ovf:capacityAllocationUnits="byte * 2^20"`
			}
		}
		fmt.Fprintf(&b, `    <Disk ovf:capacity="%s"%s ovf:diskId="%s" ovf:fileRef="file%d" ovf:format="%s"/>`+"\n",
			capacity, units, diskID(d, i), i+1, format)
	}
	b.WriteString(`  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
`)
	ctrlType, ctrlName := "20", "sataController"
	if style == VMware {
		ctrlType, ctrlName = "6", "SCSI Controller "
	}
	for c := range 2 {
		fmt.Fprintf(&b, `      <Item>
        <rasd:Address>%d</rasd:Address>
        <rasd:ElementName>%s%d</rasd:ElementName>
        <rasd:InstanceID>%d</rasd:InstanceID>
        <rasd:ResourceType>%s</rasd:ResourceType>
      </Item>
`, c, ctrlName, c, 10+c, ctrlType)
	}
	item, prefix := "Item", "rasd"
	if style == OVF2 {
		item, prefix = "StorageItem", "sasd"
	}
	for i, d := range disks {
		if d.Detached {
			continue
		}
		host := "ovf:/disk/" + diskID(d, i)
		if style == VirtualBox {
			host = "/disk/" + diskID(d, i)
		}
		addr := ""
		if d.Address >= 0 {
			addr = fmt.Sprintf("        <%s:AddressOnParent>%d</%s:AddressOnParent>\n", prefix, d.Address, prefix)
		}
		fmt.Fprintf(&b, `      <%[1]s>
%[2]s        <%[3]s:ElementName>disk%[4]d</%[3]s:ElementName>
        <%[3]s:HostResource>%[5]s</%[3]s:HostResource>
        <%[3]s:InstanceID>%[6]d</%[3]s:InstanceID>
        <%[3]s:Parent>%[7]d</%[3]s:Parent>
        <%[3]s:ResourceType>17</%[3]s:ResourceType>
      </%[1]s>
`, item, addr, prefix, i+1, host, 20+i, 10+d.Controller)
	}
	b.WriteString("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n")
	return []byte(b.String())
}

func diskID(d OVFDisk, i int) string {
	if d.ID != "" {
		return d.ID
	}
	return fmt.Sprintf("vmdisk%d", i+1)
}

// Member is one file of a generated OVA.
type Member struct {
	Name string
	Data []byte
	// Type is the tar type flag (default regular file); Linkname is for
	// links.
	Type     byte
	Linkname string
	// Format forces a tar header format (default: what archive/tar picks).
	Format tar.Format
}

// Manifest returns manifest lines "ALGO(name)= hex" for the members, algo
// being SHA1, SHA256 or SHA512. vbox uses VirtualBox's spacing
// "SHA256 (name) = hex".
func Manifest(algo string, vbox bool, members ...Member) []byte {
	var b strings.Builder
	for _, m := range members {
		var h hash.Hash
		switch algo {
		case "SHA1":
			h = sha1.New()
		case "SHA512":
			h = sha512.New()
		default:
			h = sha256.New()
		}
		h.Write(m.Data)
		if vbox {
			fmt.Fprintf(&b, "%s (%s) = %s\n", algo, m.Name, hex.EncodeToString(h.Sum(nil)))
		} else {
			fmt.Fprintf(&b, "%s(%s)= %s\n", algo, m.Name, hex.EncodeToString(h.Sum(nil)))
		}
	}
	return []byte(b.String())
}

// Tar writes the members as a tar archive (padded to GNU tar's 10 KiB
// records, as `tar cf` does).
func Tar(members ...Member) ([]byte, error) {
	var buf bytes.Buffer
	if err := WriteTar(&buf, members...); err != nil {
		return nil, err
	}
	if r := buf.Len() % 10240; r != 0 {
		buf.Write(make([]byte, 10240-r))
	}
	return buf.Bytes(), nil
}

// WriteTar writes the members as a tar archive to w.
func WriteTar(w io.Writer, members ...Member) error {
	tw := tar.NewWriter(w)
	for _, m := range members {
		typ := m.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{
			Name: m.Name, Typeflag: typ, Linkname: m.Linkname, Mode: 0o644,
			Uname: "someone", Gname: "someone", ModTime: time.Unix(1700000000, 0), Format: m.Format,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(m.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(m.Data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// OVA packages the disk image raw (its size a multiple of 512) as an OVA in
// the given style: the OVF descriptor, a streamOptimized VMDK named
// disk1.vmdk, and a SHA256 manifest (right after the descriptor for
// VMware, last for VirtualBox).
func OVA(raw []byte, style OVFStyle) ([]byte, error) {
	vmdk, err := VMDK{Raw: raw, Name: "disk1.vmdk"}.StreamOptimized()
	if err != nil {
		return nil, err
	}
	d := OVFDisk{File: "disk1.vmdk", Capacity: int64(len(raw)), Address: 0}
	if style == VMware {
		d.FileSize = int64(len(vmdk))
	}
	ovf := Member{Name: "vm.ovf", Data: OVF(style, []OVFDisk{d})}
	disk := Member{Name: "disk1.vmdk", Data: vmdk}
	mf := Member{Name: "vm.mf", Data: Manifest("SHA256", style == VirtualBox, ovf, disk)}
	if style == VirtualBox {
		return Tar(ovf, disk, mf)
	}
	return Tar(ovf, mf, disk)
}
