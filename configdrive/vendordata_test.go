package configdrive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// cloudInitVendorScript runs cloud-init's own code on an extracted drive
// in a sandbox (its cloud_dir and run_dir in a temporary directory, the
// system configuration given here, nothing read from the host's
// /etc/cloud or /var/lib/cloud): the ConfigDrive datasource reads the drive
// from its seed directory, consume_data handles the user data then the
// vendor data (honouring vendor_data.enabled from the user data), and the
// phone_home module runs twice through cloud-init's module runner with the
// configuration the modules would see; it is per instance, so the second
// run must not post again.
const cloudInitVendorScript = `
import copy, json, os, shutil, sys, logging
logging.basicConfig(level=logging.ERROR)
from cloudinit import stages
from cloudinit.config.modules import Modules
from cloudinit.sources import DataSourceConfigDrive as dscd
from cloudinit.sources.helpers import openstack
drive, work = sys.argv[1], sys.argv[2]
cloud_dir, run_dir = os.path.join(work, "cloud"), os.path.join(work, "run")
sys_cfg = {
    "system_info": {"distro": "debian", "paths": {"cloud_dir": cloud_dir, "run_dir": run_dir}},
    "datasource_list": ["ConfigDrive"],
    "vendor_data": {"enabled": True, "prefix": []},
    "vendor_data2": {"enabled": True, "prefix": []},
}
class SandboxInit(stages.Init):
    def _read_cfg(self, extra_fns):
        return copy.deepcopy(sys_cfg)
raw = openstack.ConfigDriveReader(drive).read_v2()
init = SandboxInit(ds_deps=[])
init.read_cfg()
init._initialize_filesystem()
shutil.copytree(drive, os.path.join(cloud_dir, "seed", "config_drive"))
ds = dscd.DataSourceConfigDrive(init.cfg, None, init.paths)
if not ds.get_data():
    raise SystemExit("the ConfigDrive datasource found nothing")
init.datasource = ds
init._reset()
init._reflect_cur_instance()
init.consume_data()
mods = Modules(init, None, None)
cfg = mods.cfg
for i in range(2):
    mods.run_single("phone_home")
ud = raw.get("userdata") or b""
if isinstance(ud, str):
    ud = ud.encode()
import base64
print(json.dumps({
    "vendordata": raw.get("vendordata"),
    "vendordata_raw": ds.get_vendordata_raw(),
    "userdata": base64.b64encode(ud).decode(),
    "vendor_cloud_config": os.path.isfile(init.paths.get_ipath_cur("vendor_cloud_config")),
    "phone_home": cfg.get("phone_home"),
    "instance_id": ds.get_instance_id(),
}))
`

type vendorView struct {
	VendorData        map[string]string `json:"vendordata"`
	VendorDataRaw     string            `json:"vendordata_raw"`
	UserData          []byte            `json:"userdata"`
	VendorCloudConfig bool              `json:"vendor_cloud_config"`
	PhoneHome         map[string]any    `json:"phone_home"`
	InstanceID        string            `json:"instance_id"`
}

// phoneHomeServer records the POSTs cloud-init makes.
type phoneHomeServer struct {
	*httptest.Server
	mu    sync.Mutex
	posts []phonePost
}

type phonePost struct {
	path string
	form url.Values
}

func newPhoneHomeServer(t *testing.T) *phoneHomeServer {
	s := &phoneHomeServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		form, _ := url.ParseQuery(string(b))
		s.mu.Lock()
		s.posts = append(s.posts, phonePost{path: r.Method + " " + r.URL.Path, form: form})
		s.mu.Unlock()
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *phoneHomeServer) got() []phonePost {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]phonePost(nil), s.posts...)
}

// TestVendorDataPhoneHome: cloud-init reads byoi's vendor_data.json from
// the ISO 9660 and the VFAT (4Kn) drive, leaves the user data as it was,
// and phones home exactly once — unless the customer's user data turns
// vendor data off, or brings a phone_home of its own, which replaces ours.
func TestVendorDataPhoneHome(t *testing.T) {
	requireCloudInit(t)
	srv := newPhoneHomeServer(t)
	const token = "tok-3f9a1c0d5e7b2a4c6e8f0a1b3c5d7e9f"
	ours := srv.URL + "/agent/v1/booted/" + token
	theirs := srv.URL + "/customer/own"
	cases := []struct {
		name     string
		userData string
		want     string // the path posted to, "" for none
		enabled  bool   // vendor data consumed
	}{
		{"no user data", "", "/agent/v1/booted/" + token, true},
		{"shell script", "#!/bin/sh\necho hello\n", "/agent/v1/booted/" + token, true},
		{"cloud-config with runcmd", "#cloud-config\nruncmd:\n  - [echo, hello]\n", "/agent/v1/booted/" + token, true},
		{"vendor data off", "#cloud-config\nvendor_data: {enabled: false}\n", "", false},
		{"their own phone_home", "#cloud-config\nphone_home:\n  url: " + theirs + "\n  post: [hostname]\n", "/customer/own", true},
	}
	for _, f := range []Format{ISO9660, VFAT} {
		for _, tc := range cases {
			t.Run(f.String()+"/"+tc.name, func(t *testing.T) {
				before := len(srv.got())
				c := Content{UUID: DeriveUUID("vendor|" + tc.name), Hostname: "web1", UserData: []byte(tc.userData), PhoneHomeURL: ours}
				img, err := Build(context.Background(), c, f)
				if err != nil {
					t.Fatal(err)
				}
				p := writeImage(t, img)
				want := []string{"/openstack", "/openstack/latest", "/openstack/latest/meta_data.json"}
				if tc.userData != "" {
					want = append(want, "/openstack/latest/user_data")
				}
				want = append(want, "/openstack/latest/vendor_data.json")
				if got := checkJudges(t, p, f); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("image lists\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				dir := extract(t, p, f)
				out, errOut, err := testutil.RunErr(testutil.CloudInitPython, "-c", cloudInitVendorScript, dir, t.TempDir())
				if err != nil {
					t.Fatalf("cloud-init: %v\n%s", err, lastLine(errOut))
				}
				var v vendorView
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Fatalf("%q: %v", out, err)
				}
				wantVD, _ := VendorData(ours)
				var vd map[string]string
				_ = json.Unmarshal(wantVD, &vd)
				if v.VendorData["cloud-init"] != vd["cloud-init"] || v.VendorDataRaw != vd["cloud-init"] {
					t.Errorf("cloud-init read vendor data %q (raw %q)", v.VendorData, v.VendorDataRaw)
				}
				if !bytes.Equal(v.UserData, []byte(tc.userData)) {
					t.Errorf("user data changed: %q, want %q", v.UserData, tc.userData)
				}
				if v.VendorCloudConfig != tc.enabled {
					t.Errorf("vendor cloud-config written: %v, want %v", v.VendorCloudConfig, tc.enabled)
				}
				posts := srv.got()[before:]
				if tc.want == "" {
					if len(posts) != 0 || v.PhoneHome != nil {
						t.Errorf("vendor data off, yet phone_home %v and posts %v", v.PhoneHome, posts)
					}
					return
				}
				if len(posts) != 1 {
					t.Fatalf("%d posts, want exactly 1 (phone_home runs once per instance): %v", len(posts), posts)
				}
				if posts[0].path != "POST "+tc.want {
					t.Errorf("posted to %s, want POST %s", posts[0].path, tc.want)
				}
				if tc.name == "their own phone_home" {
					// Their keys win; the ones they leave out ("tries")
					// come from ours (cloud-init's recursive dict merge).
					if v.PhoneHome["url"] != theirs || v.PhoneHome["tries"] != float64(10) {
						t.Errorf("merged phone_home %v", v.PhoneHome)
					}
					if posts[0].form.Get("hostname") != "web1" || posts[0].form.Has("instance_id") {
						t.Errorf("their post sent %v", posts[0].form)
					}
					return
				}
				if got := posts[0].form.Get("instance_id"); got != c.UUID || len(posts[0].form) != 1 {
					t.Errorf("posted %v, want only instance_id=%s", posts[0].form, c.UUID)
				}
			})
		}
	}
}

func TestVendorDataRejects(t *testing.T) {
	const token = "SECRET-TOKEN-1234"
	for _, u := range []string{
		"ftp://h/" + token, "/relative/" + token, "http:///" + token, "http://user:pw@h/" + token,
		"http://h/" + token + "#frag", "http://h/$INSTANCE_ID/" + token, "http://h/" + token + " x",
		"http://h/\"" + token, "http://h/\\" + token, "http://h/\n" + token, "http://h/é" + token,
		"http://h/" + strings.Repeat("a", 3000) + token, "http://h/{{" + token + "}}",
	} {
		_, err := Build(context.Background(), Content{UUID: "u", PhoneHomeURL: u}, ISO9660)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want ErrInvalid", u, err)
			continue
		}
		if strings.Contains(err.Error(), token) {
			t.Errorf("the error repeats the URL: %v", err)
		}
	}
	if _, err := VendorData("https://cp.example:8443/agent/v1/booted/" + token + "?x=1"); err != nil {
		t.Errorf("a good URL: %v", err)
	}
	// Without a phone-home URL nothing changes: no vendor data file.
	img, err := Build(context.Background(), Content{UUID: "u"}, VFAT)
	if err != nil || bytes.Contains(img, []byte("vendor_data")) || bytes.Contains(img, []byte("VENDOR")) {
		t.Errorf("a drive without PhoneHomeURL holds vendor data (%v)", err)
	}
}
