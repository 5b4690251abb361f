package configdrive

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

type cloudInitView = testutil.CloudInitView

func requireCloudInit(t *testing.T) { t.Helper(); testutil.RequireCloudInit(t) }

// readWithCloudInit runs cloud-init's reader on dir.
func readWithCloudInit(t *testing.T, dir string) (cloudInitView, error) {
	t.Helper()
	return testutil.ReadWithCloudInit(t, dir)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func writeImage(t *testing.T, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config-2.img")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// extract copies the drive's tree out with userspace tools.
func extract(t *testing.T, imgPath string, f Format) string {
	t.Helper()
	return testutil.ExtractDrive(t, imgPath, f == VFAT)
}

// checkJudges runs the filesystem-level judges: blkid, and isoinfo or
// fsck.fat + mdir. It returns the sorted list of paths the image holds.
func checkJudges(t *testing.T, imgPath string, f Format) []string {
	t.Helper()
	testutil.RequireCommand(t, "blkid")
	out := testutil.Run(t, "blkid", "-p", "-o", "export", imgPath)
	if !strings.Contains(out, "TYPE="+f.String()+"\n") || !strings.Contains(out, "LABEL="+Label+"\n") {
		t.Errorf("blkid -p: want TYPE=%s LABEL=%s, got:\n%s", f, Label, out)
	}
	var paths []string
	switch f {
	case ISO9660:
		testutil.RequireCommand(t, "isoinfo")
		out := testutil.Run(t, "isoinfo", "-R", "-f", "-i", imgPath)
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			paths = append(paths, l)
		}
	case VFAT:
		testutil.RequireCommand(t, "fsck.fat", "mdir")
		out := testutil.Run(t, "fsck.fat", "-n", "-v", imgPath)
		if strings.Contains(strings.ToLower(out), "differ") || strings.Contains(out, "Bad") {
			t.Errorf("fsck.fat -n reports problems:\n%s", out)
		}
		if !strings.Contains(out, "4096 bytes per logical sector") {
			t.Errorf("fsck.fat: want 4096-byte sectors:\n%s", out)
		}
		for _, d := range []string{"::/", "::/openstack", "::/openstack/latest"} {
			out := testutil.Run(t, "mdir", "-b", "-i", imgPath, d)
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if l = strings.TrimSuffix(strings.TrimPrefix(l, "::"), "/"); l != "" {
					paths = append(paths, l)
				}
			}
		}
	}
	sort.Strings(paths)
	return paths
}

func binaryUserData(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	copy(b, "#cloud-config\n\x00\xff\xfe\x80 not UTF-8\n")
	return b
}

func TestBuildReadByCloudInit(t *testing.T) {
	requireCloudInit(t)
	full := Content{
		UUID:             DeriveUUID("https://example.com/image.qcow2|host1|/dev/sda"),
		Hostname:         "host1.example.com",
		SSHKey:           "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2xRcMdYfbYZ1Uqq3YkqBhnh5DbXqL4zXk8s2Vq5Q3T user@host",
		UserData:         binaryUserData(3000),
		Meta:             map[string]string{"role": "web", "quote": `a "b" <c> & ü`, "empty": ""},
		AvailabilityZone: "gra3",
		LaunchIndex:      2,
	}
	cases := []struct {
		name string
		c    Content
	}{
		{"full", full},
		{"uuid only", Content{UUID: "c9f1d2a0-0000-4000-8000-000000000001"}},
		{"multi-MiB user data", Content{UUID: DeriveUUID("big"), Hostname: "big", UserData: binaryUserData(5<<20 + 7)}},
	}
	for _, f := range []Format{ISO9660, VFAT} {
		for _, tc := range cases {
			t.Run(f.String()+"/"+tc.name, func(t *testing.T) {
				img, err := Build(context.Background(), tc.c, f)
				if err != nil {
					t.Fatal(err)
				}
				if f == VFAT && len(img)%4096 != 0 {
					t.Errorf("vfat image size %d is not a multiple of 4096", len(img))
				}
				if f == ISO9660 && len(img)%2048 != 0 {
					t.Errorf("iso image size %d is not a multiple of 2048", len(img))
				}
				p := writeImage(t, img)
				want := []string{"/openstack", "/openstack/latest", "/openstack/latest/meta_data.json"}
				if len(tc.c.UserData) > 0 {
					want = append(want, "/openstack/latest/user_data")
				}
				if got := checkJudges(t, p, f); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("image lists\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				dir := extract(t, p, f)
				v, err := readWithCloudInit(t, dir)
				if err != nil {
					t.Fatalf("cloud-init rejects the drive: %v", err)
				}
				checkView(t, tc.c, v)
			})
		}
	}
}

func checkView(t *testing.T, c Content, v cloudInitView) {
	t.Helper()
	if v.Version != 2 {
		t.Errorf("version %d, want 2 (openstack/latest)", v.Version)
	}
	if v.UUID != c.UUID || v.InstanceID != c.UUID || v.FullUUID != c.UUID {
		t.Errorf("uuid %q instance-id %q read_config_drive uuid %q, want %q", v.UUID, v.InstanceID, v.FullUUID, c.UUID)
	}
	strp := func(p *string) string {
		if p == nil {
			return "<absent>"
		}
		return *p
	}
	wantHost := c.Hostname
	if wantHost == "" {
		wantHost = "<absent>"
	}
	if strp(v.Hostname) != wantHost || strp(v.Name) != wantHost {
		t.Errorf("local-hostname %q name %q, want %q", strp(v.Hostname), strp(v.Name), wantHost)
	}
	var wantKeys []string
	if c.SSHKey != "" {
		wantKeys = []string{c.SSHKey}
	}
	if strings.Join(v.PublicKeys, "\n") != strings.Join(wantKeys, "\n") {
		t.Errorf("public keys %q, want %q", v.PublicKeys, wantKeys)
	}
	if len(v.Meta) != len(c.Meta) {
		t.Errorf("meta has %d keys, want %d", len(v.Meta), len(c.Meta))
	}
	for k, want := range c.Meta {
		if got, ok := v.Meta[k]; !ok || got != want {
			t.Errorf("meta[%q] = %q, want %q", k, got, want)
		}
	}
	wantAZ := c.AvailabilityZone
	if wantAZ == "" {
		wantAZ = "<absent>"
	}
	if strp(v.AvailabilityZone) != wantAZ {
		t.Errorf("availability_zone %q, want %q", strp(v.AvailabilityZone), wantAZ)
	}
	if v.LaunchIndex != c.LaunchIndex {
		t.Errorf("launch_index %d, want %d", v.LaunchIndex, c.LaunchIndex)
	}
	ud, err := base64.StdEncoding.DecodeString(v.UserData)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ud, c.UserData) {
		t.Errorf("user data differs: got %d bytes, want %d", len(ud), len(c.UserData))
	}
}

// TestCloudInitRejectsDriveWithoutUUID proves the harness can fail: the same
// layout without "uuid" in meta_data.json is refused by cloud-init.
func TestCloudInitRejectsDriveWithoutUUID(t *testing.T) {
	requireCloudInit(t)
	for _, f := range []Format{ISO9660, VFAT} {
		t.Run(f.String(), func(t *testing.T) {
			img, err := build(context.Background(), []file{{path: MetaDataPath, data: []byte(`{"hostname": "h"}`)}}, f)
			if err != nil {
				t.Fatal(err)
			}
			dir := extract(t, writeImage(t, img), f)
			if _, err := os.Stat(filepath.Join(dir, "openstack/latest/meta_data.json")); err != nil {
				t.Fatalf("extraction lost meta_data.json: %v", err)
			}
			_, err = readWithCloudInit(t, dir)
			if err == nil || !strings.Contains(err.Error(), "No 'uuid' entry in metadata") {
				t.Fatalf("cloud-init accepted a drive without uuid (err %v)", err)
			}
		})
	}
}

func TestBuildRejects(t *testing.T) {
	ctx := context.Background()
	secret := "s3cr3t-user-data"
	for _, f := range []Format{ISO9660, VFAT} {
		big := append([]byte(secret), make([]byte, MaxSize)...)
		_, err := Build(ctx, Content{UUID: "u", UserData: big}, f)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "64 MiB") {
			t.Errorf("%s: %d bytes of user data: err %v, want ErrTooLarge naming 64 MiB", f, len(big), err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error leaks user data: %v", f, err)
		}
		if _, err := Build(ctx, Content{Hostname: "h", UserData: []byte(secret)}, f); !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: no uuid: err %v, want ErrInvalid without the user data", f, err)
		}
		if _, err := Build(ctx, Content{UUID: "u", Hostname: "\xff"}, f); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: invalid UTF-8 hostname: err %v, want ErrInvalid", f, err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := Build(cctx, Content{UUID: "u"}, f); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: canceled context: err %v", f, err)
		}
	}
	if _, err := Build(ctx, Content{UUID: "u"}, Format(7)); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown format: err %v", err)
	}
}

// TestBuildNearLimit fills the drive close to MaxSize: it must build, and
// the judges must still accept it.
func TestBuildNearLimit(t *testing.T) {
	for _, f := range []Format{ISO9660, VFAT} {
		t.Run(f.String(), func(t *testing.T) {
			c := Content{UUID: "u", UserData: bytes.Repeat([]byte{'x'}, MaxSize-256<<10)}
			img, err := Build(context.Background(), c, f)
			if err != nil {
				t.Fatal(err)
			}
			if len(img) > MaxSize {
				t.Fatalf("image is %d bytes, over %d", len(img), MaxSize)
			}
			checkJudges(t, writeImage(t, img), f)
		})
	}
}

func TestMetaDataJSON(t *testing.T) {
	c := Content{UUID: "u", Hostname: "h", SSHKey: "ssh-rsa AAAA k", Meta: map[string]string{"b": "2", "a": "1"}, LaunchIndex: 1}
	got, err := c.metaDataJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"uuid":"u","hostname":"h","name":"h","public_keys":{"default":"ssh-rsa AAAA k"},"meta":{"a":"1","b":"2"},"launch_index":1}` + "\n"
	if string(got) != want {
		t.Errorf("meta_data.json\n%s\nwant\n%s", got, want)
	}
	got, _ = (&Content{UUID: "u", Meta: map[string]string{}}).metaDataJSON()
	if want := `{"uuid":"u","launch_index":0}` + "\n"; string(got) != want {
		t.Errorf("minimal meta_data.json %s, want %s", got, want)
	}
}

func TestFormatFor(t *testing.T) {
	for ss, want := range map[int64]Format{512: ISO9660, 4096: VFAT, 0: ISO9660, 2048: ISO9660} {
		if got := FormatFor(ss); got != want {
			t.Errorf("FormatFor(%d) = %s, want %s", ss, got, want)
		}
	}
}

func TestDeriveUUID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := DeriveUUID("https://x/img|host|/dev/sda"), DeriveUUID("https://x/img|host|/dev/sda")
	if a != b || !re.MatchString(a) {
		t.Errorf("DeriveUUID: %q, %q: want equal RFC 4122 v5 UUIDs", a, b)
	}
	if c := DeriveUUID("https://x/img|host|/dev/sdb"); c == a {
		t.Errorf("different seeds give the same UUID %s", c)
	}
	// Cross-check with Python's uuid.uuid5 (an independent implementation).
	if _, err := exec.LookPath(testutil.CloudInitPython); err == nil {
		ns := "6f1c9a52-3e0b-4d8e-9b27-5cd48013a64f"
		out := testutil.Run(t, testutil.CloudInitPython, "-c", "import uuid,sys; print(uuid.uuid5(uuid.UUID(sys.argv[1]), sys.argv[2]))", ns, "seed")
		if got := DeriveUUID("seed"); strings.TrimSpace(out) != got {
			t.Errorf("DeriveUUID(seed) = %s, python uuid5 = %s", got, out)
		}
	}
}

func TestVFATDeterministic(t *testing.T) {
	c := Content{UUID: "u", Hostname: "h", UserData: []byte("#!/bin/sh\n")}
	a, err := Build(context.Background(), c, VFAT)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(context.Background(), c, VFAT)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("two VFAT builds of the same content differ")
	}
}

// TestBlkidOnLoopDevice checks what cloud-init's device search sees: blkid on
// a block device whose logical sector size is the one FormatFor chose the
// format for (4096 for VFAT: a 4Kn disk).
func TestBlkidOnLoopDevice(t *testing.T) {
	for _, ss := range []int64{512, 4096} {
		f := FormatFor(ss)
		t.Run(f.String(), func(t *testing.T) {
			img, err := Build(context.Background(), Content{UUID: "u", Hostname: "h"}, f)
			if err != nil {
				t.Fatal(err)
			}
			dev := testutil.LoopDevice(t, writeImage(t, img), int(ss))
			out := testutil.Run(t, "blkid", "-p", "-o", "export", dev)
			if !strings.Contains(out, "TYPE="+f.String()+"\n") || !strings.Contains(out, "LABEL="+Label+"\n") {
				t.Errorf("blkid -p %s (sector size %d): want TYPE=%s LABEL=%s, got:\n%s", dev, ss, f, Label, out)
			}
		})
	}
}

// TestVFATTypeBoundary builds drives whose cluster count falls around the
// FAT12/FAT16 boundary (4085 clusters): fsck.fat must accept each and mtools
// must read the user data back byte-exact.
func TestVFATTypeBoundary(t *testing.T) {
	testutil.RequireCommand(t, "fsck.fat", "mtype")
	// Clusters used besides user data: openstack/, latest/, meta_data.json.
	for _, udClusters := range []int{4060, 4081, 4100} {
		ud := binaryUserData(udClusters*4096 - 100)
		img, err := Build(context.Background(), Content{UUID: "u", UserData: ud}, VFAT)
		if err != nil {
			t.Fatal(err)
		}
		p := writeImage(t, img)
		out := testutil.Run(t, "fsck.fat", "-n", "-v", p)
		bits := "12"
		if udClusters+3 > 4084-16 {
			bits = "16"
		}
		if !strings.Contains(out, bits+" bit entries") {
			t.Errorf("%d user data clusters: want FAT%s:\n%s", udClusters, bits, out)
		}
		got := testutil.Run(t, "mtype", "-i", p, "::/openstack/latest/user_data")
		if got != string(ud) {
			t.Errorf("%d user data clusters: mtype returns %d bytes, want %d identical", udClusters, len(got), len(ud))
		}
	}
}

// TestISOLeavesNoTemporaryFiles: go-diskfs stages the tree (user data
// included) on disk; Build must remove it, on success and on error.
func TestISOLeavesNoTemporaryFiles(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if _, err := Build(context.Background(), Content{UUID: "u", UserData: []byte("secret")}, ISO9660); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = buildISO(ctx, []file{{path: MetaDataPath, data: []byte("{}")}})
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

func TestShortNames(t *testing.T) {
	var sib []*fatNode
	for _, tc := range []struct{ long, short string }{
		{"openstack", "OPENST~1"},
		{"latest", "LATEST"},
		{"meta_data.json", "META_D~1.JSO"},
		{"user_data", "USER_D~1"},
		{"USER_DATA", "USER_D~2"},
		{"README", "README"},
		{"a b.c.txt", "ABC~1.TXT"},
	} {
		s := shortName(tc.long, sib)
		if got := shortString(s); got != tc.short {
			t.Errorf("shortName(%q) = %q, want %q", tc.long, got, tc.short)
		}
		sib = append(sib, &fatNode{name: tc.long, short: s})
	}
	// Checksum from the FAT specification's algorithm, computed by hand for
	// "README     ": a known-answer guard against a changed rotate.
	var sum byte
	for _, c := range []byte("README     ") {
		sum = ((sum & 1) << 7) + (sum >> 1) + c
	}
	if got := lfnChecksum(pad83("README", "")); got != sum {
		t.Errorf("lfnChecksum = %#x, want %#x", got, sum)
	}
}

// FuzzBuildVFAT: any content either builds into an image of whole 4096-byte
// sectors within MaxSize or returns an error; it never panics.
func FuzzBuildVFAT(f *testing.F) {
	f.Add("u", "host", "ssh-ed25519 AAAA", "k", "v", []byte("#cloud-config\n"), 0)
	f.Add("", "", "", "", "", []byte(nil), -1)
	f.Fuzz(func(t *testing.T, uuid, host, key, mk, mv string, ud []byte, li int) {
		c := Content{UUID: uuid, Hostname: host, SSHKey: key, UserData: ud, LaunchIndex: li, Meta: map[string]string{mk: mv}}
		img, err := Build(context.Background(), c, VFAT)
		if err != nil {
			return
		}
		if len(img)%4096 != 0 || len(img) > MaxSize || len(img) == 0 {
			t.Fatalf("image of %d bytes", len(img))
		}
	})
}
