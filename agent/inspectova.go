package agent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/vmdk"
)

// OVASummary is what inspect reads of an OVA: the OVF's disks, the disk a
// deployment would write, and its VMDK header.
type OVASummary struct {
	Disks []OVADisk `json:"disks"`
	// Boot is the id of the disk a deployment writes.
	Boot     string   `json:"boot,omitempty"`
	Manifest string   `json:"manifest,omitempty"`
	VMDK     *VMDKSum `json:"vmdk,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// Refused says why a deployment would refuse the package ("" when
	// nothing refuses it as far as its headers tell).
	Refused string `json:"refused,omitempty"`
}

// OVADisk is a disk of the OVF descriptor.
type OVADisk struct {
	ID       string `json:"id"`
	File     string `json:"file"`
	Format   string `json:"format"` // VMDK create type, or the OVF format URL
	Capacity int64  `json:"capacity"`
}

// VMDKSum is the deployed disk's VMDK header.
type VMDKSum struct {
	CreateType string `json:"createType"`
	Version    int    `json:"version"`
	Capacity   int64  `json:"capacity"`
	GrainSize  int64  `json:"grainSize"`
	Compressed bool   `json:"compressed"`
}

// maxOVFInspect bounds the descriptor inspect reads (as the deployment).
const maxOVFInspect = 16 << 20

// inspectOVA walks the tar headers of an OVA (seeking past members, so a
// URL is read only where headers, the descriptor and the VMDK header are),
// parses the OVF and checks the deployed disk's VMDK header.
func (r *InspectReport) inspectOVA(src io.ReaderAt, size int64, opts InspectOptions) {
	s := &OVASummary{Disks: []OVADisk{}}
	r.OVA = s
	refuse := func(err error) {
		s.Refused = Message(err)
		r.Problems = append(r.Problems, s.Refused)
	}
	tr := tar.NewReader(io.NewSectionReader(src, 0, size))
	var ovf *ova.OVF
	for i := 0; i < 1000; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			refuse(fmt.Errorf("the OVA is not a readable tar archive: %w", err))
			return
		}
		name := path.Clean(h.Name)
		switch {
		case ovf == nil:
			if !strings.HasSuffix(strings.ToLower(name), ".ovf") || h.Size > maxOVFInspect {
				refuse(errors.New("the first member of an OVA must be its OVF descriptor (DSP0243), of at most 16 MiB"))
				return
			}
			data, err := io.ReadAll(io.LimitReader(tr, h.Size))
			if err != nil {
				refuse(err)
				return
			}
			if ovf, err = ova.ParseOVF(data); err != nil {
				refuse(err)
				return
			}
			for _, d := range ovf.Disks {
				f := d.CreateType
				if f == "" {
					f = d.Format
				}
				file := d.FileRef
				if ff, ok := fileOf(ovf, d.FileRef); ok {
					file = ff
				}
				s.Disks = append(s.Disks, OVADisk{ID: d.ID, File: file, Format: f, Capacity: d.Capacity})
			}
			s.Boot = ovf.Boot.ID
			s.Warnings = append(s.Warnings, ovf.Warnings...)
		case strings.HasSuffix(strings.ToLower(name), ".mf"):
			s.Manifest = name
		case name == path.Clean(ovf.BootFile.Href):
			head := make([]byte, min(h.Size, 64<<10))
			if _, err := io.ReadFull(tr, head); err != nil {
				refuse(fmt.Errorf("read the disk %s: %w", name, err))
				return
			}
			if ovf.BootFile.Compression != "" {
				s.Warnings = append(s.Warnings, "the disk member is "+ovf.BootFile.Compression+"-compressed: its VMDK header is read when deploying")
				continue
			}
			info, err := vmdk.CheckHeader(head, name, opts.DiskSize)
			if err != nil {
				refuse(err)
				return
			}
			s.VMDK = &VMDKSum{CreateType: info.CreateType, Version: info.Version, Capacity: info.Capacity, GrainSize: info.GrainSize, Compressed: info.Compressed}
			r.VirtualSize = info.Capacity
		}
	}
	if ovf == nil {
		refuse(errors.New("the OVA holds no OVF descriptor"))
		return
	}
	if s.VMDK == nil && s.Refused == "" && ovf.BootFile.Compression == "" {
		refuse(fmt.Errorf("the OVA holds no member %q, the disk its OVF describes", ovf.BootFile.Href))
	}
	r.Problems = append(r.Problems, s.Warnings...)
}

func fileOf(o *ova.OVF, id string) (string, bool) {
	for _, f := range o.Files {
		if f.ID == id {
			return f.Href, true
		}
	}
	return "", false
}
