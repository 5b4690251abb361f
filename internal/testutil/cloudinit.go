package testutil

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CloudInitPython is Debian's interpreter, the one with cloud-init's
// modules (the python3 first on PATH may be another one).
const CloudInitPython = "/usr/bin/python3"

// cloudInitScript reads a config drive directory with cloud-init's own code:
// the OpenStack helper's read_v2 and the datasource's read_config_drive.
const cloudInitScript = `
import base64, json, sys
from cloudinit.sources.helpers import openstack
from cloudinit.sources import DataSourceConfigDrive as ds
from cloudinit import sources
r = openstack.ConfigDriveReader(sys.argv[1]).read_v2()
full = ds.read_config_drive(sys.argv[1])
md = r["metadata"]
ud = r.get("userdata") or b""
if isinstance(ud, str):
    ud = ud.encode()
print(json.dumps({
    "uuid": md.get("uuid"),
    "instance_id": md.get("instance-id"),
    "hostname": md.get("local-hostname"),
    "name": md.get("name"),
    "public_keys": sources.normalize_pubkey_data(md.get("public_keys")),
    "meta": md.get("meta"),
    "availability_zone": md.get("availability_zone"),
    "launch_index": md.get("launch_index"),
    "userdata": base64.b64encode(ud).decode(),
    "full_uuid": full["metadata"].get("uuid"),
    "version": r["version"],
}))
`

// CloudInitView is what cloud-init's reader found on a config drive.
type CloudInitView struct {
	UUID             string            `json:"uuid"`
	InstanceID       string            `json:"instance_id"`
	Hostname         *string           `json:"hostname"`
	Name             *string           `json:"name"`
	PublicKeys       []string          `json:"public_keys"`
	Meta             map[string]string `json:"meta"`
	AvailabilityZone *string           `json:"availability_zone"`
	LaunchIndex      int               `json:"launch_index"`
	UserData         string            `json:"userdata"` // base64
	FullUUID         string            `json:"full_uuid"`
	Version          int               `json:"version"`
}

// RequireCloudInit skips (fails in CI) without cloud-init's Python modules.
func RequireCloudInit(t testing.TB) {
	t.Helper()
	if _, _, err := RunErr(CloudInitPython, "-c", "import cloudinit.sources.helpers.openstack"); err != nil {
		Unavailable(t, "needs cloud-init's python modules in %s: %v", CloudInitPython, err)
	}
}

// ReadWithCloudInit runs cloud-init's reader on an extracted drive dir.
func ReadWithCloudInit(t testing.TB, dir string) (CloudInitView, error) {
	t.Helper()
	out, errOut, err := RunErr(CloudInitPython, "-c", cloudInitScript, dir)
	if err != nil {
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		return CloudInitView{}, errors.New(err.Error() + ": " + lines[len(lines)-1])
	}
	var v CloudInitView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("cloud-init script output %q: %v", out, err)
	}
	return v, nil
}

// ExtractDrive copies a config drive image's tree out with userspace tools
// (this kernel cannot mount iso9660 or vfat): xorriso for ISO 9660, mcopy
// for FAT (vfat true).
func ExtractDrive(t testing.TB, imgPath string, vfat bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "drive")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if vfat {
		RequireCommand(t, "mcopy")
		Run(t, "mcopy", "-s", "-n", "-i", imgPath, "::/openstack", dir+"/")
	} else {
		RequireCommand(t, "xorriso")
		Run(t, "xorriso", "-osirrox", "on", "-indev", imgPath, "-extract", "/", dir)
	}
	return dir
}
