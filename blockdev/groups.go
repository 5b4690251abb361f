package blockdev

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// ErrNoGroup is wrapped when a diskGroupId names no disk group.
var ErrNoGroup = errors.New("no such disk group")

// Group is a set of disks of the same kind, OVH's "disk group".
type Group struct {
	// ID is the diskGroupId, from 1.
	ID int
	// Description is OVH-style: "2 X Disk NVME 1920 GB, JBOD", or for a
	// hardware RAID volume "1 X Disk SAS 1199 GB, HW RAID (DELL PERC H730P)".
	Description string
	// DiskType is NVME, SSD, SAS or SATA (DiskTypeOf).
	DiskType string
	// DiskSize is the size of each disk in bytes.
	DiskSize int64
	// RAIDController is the hardware RAID controller ("vendor model"), ""
	// for plain disks (JBOD).
	RAIDController string
	// Disks are in natural name order; Disks[0] receives the image.
	Disks []Disk
}

// typeRank orders disk types in MakeGroups.
var typeRank = map[string]int{"NVME": 0, "SSD": 1, "SAS": 2, "SATA": 3}

// MakeGroups groups the eligible disks (Skipped == "") into disk groups.
// Disks are in the same group when they have the same diskType
// (DiskTypeOf), the same size in bytes, the same model and the same RAID
// controller. Disks in use stay in their group (SelectDisk refuses them).
//
// Groups are numbered from 1 in this order:
//  1. diskType: NVME, then SSD, then SAS, then SATA, then anything else;
//  2. larger disks first;
//  3. model, alphabetically;
//  4. plain disks before hardware RAID volumes, then RAID controller name;
//  5. the name of the group's first disk, in natural order.
//
// Within a group disks are in natural name order (sda < sdb < sdaa,
// nvme0n1 < nvme1n1 < nvme10n1); the first one receives the image.
// diskGroupId 0 (or absent) means group 1.
func MakeGroups(disks []Disk) []Group {
	type key struct {
		typ, model, raid string
		size             int64
	}
	byKey := map[key]*Group{}
	var groups []*Group
	for _, d := range disks {
		if d.Skipped != "" {
			continue
		}
		if d.DiskType == "" {
			d.DiskType = DiskTypeOf(d)
		}
		k := key{d.DiskType, d.Model, d.RAIDController, d.Size}
		g := byKey[k]
		if g == nil {
			g = &Group{DiskType: d.DiskType, DiskSize: d.Size, RAIDController: d.RAIDController}
			byKey[k] = g
			groups = append(groups, g)
		}
		g.Disks = append(g.Disks, d)
	}
	for _, g := range groups {
		sort.SliceStable(g.Disks, func(i, j int) bool { return lessName(g.Disks[i].Name, g.Disks[j].Name) })
	}
	rank := func(t string) int {
		if r, ok := typeRank[t]; ok {
			return r
		}
		return len(typeRank)
	}
	sort.SliceStable(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		switch {
		case rank(a.DiskType) != rank(b.DiskType):
			return rank(a.DiskType) < rank(b.DiskType)
		case a.DiskType != b.DiskType:
			return a.DiskType < b.DiskType
		case a.DiskSize != b.DiskSize:
			return a.DiskSize > b.DiskSize
		case a.Disks[0].Model != b.Disks[0].Model:
			return a.Disks[0].Model < b.Disks[0].Model
		case a.RAIDController != b.RAIDController:
			return a.RAIDController < b.RAIDController
		}
		return lessName(a.Disks[0].Name, b.Disks[0].Name)
	})
	out := make([]Group, len(groups))
	for i, g := range groups {
		g.ID = i + 1
		g.Description = describe(g)
		out[i] = *g
	}
	return out
}

// GB is the decimal gigabytes OVH uses in disk group descriptions, rounded
// to the nearest.
func GB(size int64) int64 { return (size + 500_000_000) / 1_000_000_000 }

func describe(g *Group) string {
	layout := "JBOD"
	if g.RAIDController != "" {
		layout = "HW RAID (" + g.RAIDController + ")"
	}
	return fmt.Sprintf("%d X Disk %s %d GB, %s", len(g.Disks), g.DiskType, GB(g.DiskSize), layout)
}

// SelectDisk returns the disk an image goes to for diskGroupId id: the
// first disk of group id, where 0 means group 1. It fails when the group
// does not exist (naming the groups that do) and when that disk is in use
// (naming why, wrapping ErrInUse).
func SelectDisk(groups []Group, id int) (Disk, error) {
	want := id
	if want == 0 {
		want = 1
	}
	for _, g := range groups {
		if g.ID != want || len(g.Disks) == 0 {
			continue
		}
		d := g.Disks[0]
		if d.InUse {
			// The disk is returned too: the caller names it and its reason.
			return d, fmt.Errorf("disk group %d: first disk %s: %w: %s", want, d.Path, ErrInUse, d.InUseReason)
		}
		return d, nil
	}
	if len(groups) == 0 {
		return Disk{}, fmt.Errorf("disk group %d: %w: no eligible disks found", want, ErrNoGroup)
	}
	var have []string
	for _, g := range groups {
		have = append(have, fmt.Sprintf("%d (%s)", g.ID, g.Description))
	}
	return Disk{}, fmt.Errorf("disk group %d: %w; existing groups: %s", want, ErrNoGroup, strings.Join(have, ", "))
}

// WriteTable prints the disk groups for `byoi disks`: one line per group,
// then one line per disk. The disk marked "target" is the one a deployment
// to that group would write; a disk in use shows why.
func WriteTable(w io.Writer, groups []Group) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tDESCRIPTION")
	for _, g := range groups {
		def := ""
		if g.ID == 1 {
			def = " (default)"
		}
		fmt.Fprintf(tw, "%d\t%s%s\n", g.ID, g.Description, def)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "GROUP\tDISK\tSIZE\tTYPE\tTRANSPORT\tSECTOR\tMODEL\tSERIAL\tSTATUS")
	for _, g := range groups {
		for i, d := range g.Disks {
			status := ""
			switch {
			case d.InUse:
				status = "in use: " + d.InUseReason
			case i == 0:
				status = "target"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d GB\t%s\t%s\t%d/%d\t%s\t%s\t%s\n",
				g.ID, d.Path, GB(d.Size), g.DiskType, dash(d.Transport),
				d.LogicalSectorSize, d.PhysicalSectorSize, dash(d.Model), dash(d.Serial), status)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write disk table: %w", err)
	}
	return writeTrimmed(w, buf.Bytes())
}

// WriteSkipped prints the disks that are not eligible (Skipped != "") with
// the reason, for `byoi disks --all`. It prints nothing when there are none.
func WriteSkipped(w io.Writer, disks []Disk) error {
	var skipped []Disk
	for _, d := range disks {
		if d.Skipped != "" {
			skipped = append(skipped, d)
		}
	}
	if len(skipped) == 0 {
		return nil
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SKIPPED\tSIZE\tTRANSPORT\tMODEL\tREASON")
	for _, d := range skipped {
		why := d.Skipped
		if d.InUse {
			why += "; in use: " + d.InUseReason
		}
		fmt.Fprintf(tw, "%s\t%d GB\t%s\t%s\t%s\n", d.Path, GB(d.Size), dash(d.Transport), dash(d.Model), why)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write skipped disks: %w", err)
	}
	return writeTrimmed(w, buf.Bytes())
}

// writeTrimmed writes a table without the padding tabwriter leaves at the
// end of lines whose last cells are empty.
func writeTrimmed(w io.Writer, table []byte) error {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(table, []byte("\n")) {
		nl := bytes.HasSuffix(line, []byte("\n"))
		out.Write(bytes.TrimRight(line, " \n"))
		if nl {
			out.WriteByte('\n')
		}
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("write disk table: %w", err)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// jsonGroup is one entry of OVH's specifications/hardware diskGroups.
type jsonGroup struct {
	DiskGroupID    int      `json:"diskGroupId"`
	Description    string   `json:"description"`
	DiskSize       jsonSize `json:"diskSize"`
	DiskType       string   `json:"diskType"`
	NumberOfDisks  int      `json:"numberOfDisks"`
	RAIDController *string  `json:"raidController"`
	Disks          []Disk   `json:"disks"`
}

type jsonSize struct {
	Unit  string `json:"unit"`
	Value int64  `json:"value"`
}

// GroupsJSON renders groups in the shape of OVH's
// GET /dedicated/server/{serviceName}/specifications/hardware "diskGroups"
// ({diskGroupId, description, diskSize{unit:"GB", value}, diskType,
// numberOfDisks, raidController}) plus a "disks" array with each disk's
// details and in-use state. raidController is null for plain disks.
func GroupsJSON(groups []Group) ([]byte, error) {
	out := make([]jsonGroup, 0, len(groups))
	for _, g := range groups {
		jg := jsonGroup{
			DiskGroupID:   g.ID,
			Description:   g.Description,
			DiskSize:      jsonSize{Unit: "GB", Value: GB(g.DiskSize)},
			DiskType:      g.DiskType,
			NumberOfDisks: len(g.Disks),
			Disks:         g.Disks,
		}
		if g.RAIDController != "" {
			rc := g.RAIDController
			jg.RAIDController = &rc
		}
		if jg.Disks == nil {
			jg.Disks = []Disk{}
		}
		out = append(out, jg)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("disk groups json: %w", err)
	}
	return b, nil
}
