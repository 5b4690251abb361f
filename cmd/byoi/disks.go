package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/partition"
)

func cmdDisks(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("disks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonOut := fs.Bool("json", false, "print OVH's diskGroups shape as JSON")
	all := fs.Bool("all", false, "also list loop and other virtual devices")
	sysRoot := fs.String("sysfs", "", "read this sysfs tree instead of /sys (testing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sys := blockdev.System{SysRoot: *sysRoot}
	disks, err := sys.Disks(blockdev.ScanOptions{IncludeVirtual: *all})
	if err != nil {
		return err
	}
	groups := blockdev.MakeGroups(disks)
	if *jsonOut {
		b, err := blockdev.GroupsJSON(groups)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	return blockdev.WriteTable(stdout, groups)
}

// printTable prints a partition table like a short `sfdisk -l`.
func printTable(w io.Writer, t *partition.Table) {
	fmt.Fprintf(w, "partition table: %s, sector size %d\n", t.Type, t.SectorSize)
	fmt.Fprintf(w, "  %-3s %12s %12s  %-22s %s\n", "#", "start", "size", "type", "name")
	for _, p := range t.Partitions {
		fmt.Fprintf(w, "  %-3d %12d %12s  %-22s %s\n", p.Number, p.Start, humanBytes(p.Size), p.TypeName, p.Name)
	}
}
