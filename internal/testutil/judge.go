package testutil

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// DeployedWant is what a deployed disk's ConfigDrive must carry.
type DeployedWant struct {
	Hostname string
	SSHKey   string // a key line; cloud-init must list it (comment aside)
	UserData []byte // nil: not checked
	Meta     map[string]string
}

// JudgeDeployedDisk checks a disk a deployment wrote, with the peers as
// judges: `sgdisk -v` finds no problem in its GPT, the config-2 partition
// (found by sfdisk) holds a filesystem blkid labels config-2, and
// cloud-init's own reader finds the hostname, the SSH key, the user data
// and the metadata in it. It returns cloud-init's view.
func JudgeDeployedDisk(t testing.TB, path string, want DeployedWant) CloudInitView {
	t.Helper()
	RequireCommand(t, "sgdisk", "sfdisk", "blkid")
	RequireCloudInit(t)
	if out := Run(t, "sgdisk", "-v", path); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v %s:\n%s", path, out)
	}
	var dump struct {
		PartitionTable struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Name  string `json:"name"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(Run(t, "sfdisk", "--json", path)), &dump); err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	ss := dump.PartitionTable.SectorSize
	if ss == 0 {
		ss = 512
	}
	var start, size int64 = -1, 0
	for _, p := range dump.PartitionTable.Partitions {
		if p.Name == "config-2" {
			start, size = p.Start*ss, p.Size*ss
		}
	}
	if start < 0 {
		t.Fatalf("no partition named config-2 on %s: %+v", path, dump.PartitionTable.Partitions)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	part := filepath.Join(t.TempDir(), "config-2.img")
	out, err := os.Create(part)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(f, start, size)); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	bl := Run(t, "blkid", "-p", "-o", "export", part)
	if !strings.Contains(bl, "LABEL=config-2\n") {
		t.Errorf("blkid -p on the config-2 partition:\n%s", bl)
	}
	dir := ExtractDrive(t, part, strings.Contains(bl, "TYPE=vfat"))
	v, err := ReadWithCloudInit(t, dir)
	if err != nil {
		t.Fatalf("cloud-init rejects the ConfigDrive: %v", err)
	}
	if want.Hostname != "" && (v.Hostname == nil || *v.Hostname != want.Hostname) {
		t.Errorf("cloud-init hostname %v, want %q", v.Hostname, want.Hostname)
	}
	if want.SSHKey != "" {
		found := false
		for _, k := range v.PublicKeys {
			if strings.HasPrefix(k, strings.Join(strings.Fields(want.SSHKey)[:2], " ")) {
				found = true
			}
		}
		if !found {
			t.Errorf("cloud-init keys %q lack %q", v.PublicKeys, want.SSHKey)
		}
	}
	if want.UserData != nil {
		ud, _ := base64.StdEncoding.DecodeString(v.UserData)
		if !bytes.Equal(ud, want.UserData) {
			t.Errorf("cloud-init user data %q, want %q", ud, want.UserData)
		}
	}
	for k, val := range want.Meta {
		if v.Meta[k] != val {
			t.Errorf("cloud-init meta %q = %q, want %q", k, v.Meta[k], val)
		}
	}
	return v
}
