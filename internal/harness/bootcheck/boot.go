package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/byoi/byoi/internal/harness"
)

// boot is one boot case: a deployed disk booted under a firmware, with the
// hostname the login prompt must show.
type boot struct {
	name, fw, disk, want string
	failFast             bool // stop as soon as the prompt shows another hostname
	r                    *runner
	report               *harness.Case
	early                bool // stopped early: only the hostname is decided
	fails                []string
}

func (b *boot) failedCheck(name string) bool {
	for _, f := range b.fails {
		if f == name {
			return true
		}
	}
	return false
}

// check records one check; after an early stop only the hostname is
// decided, other failures are undecided (SKIP).
func (b *boot) check(name string, ok bool, format string, a ...any) {
	if !ok && b.early && name != "hostname" {
		b.report.Skip(name, "not seen before the early stop (%s)", fmt.Sprintf(format, a...))
		return
	}
	if !b.report.Check(name, ok, format, a...) {
		b.fails = append(b.fails, name)
	}
}

var (
	finalRE      = regexp.MustCompile(`Cloud-init v\. .* finished at .*`)
	promptRE     = regexp.MustCompile(`[A-Za-z0-9._-]+ login:`)
	datasourceRE = regexp.MustCompile(`Datasource DataSourceConfigDrive \[net,ver=2\]\[source=/dev/vd[a-z][0-9]+\]`)
	authKeysRE   = regexp.MustCompile(`Authorized keys from /home/debian/\.ssh/authorized_keys for user debian`)
)

// console is the console file with \r removed (what the checks match).
func console(path string) string {
	c, _ := os.ReadFile(path)
	return strings.ReplaceAll(string(c), "\r", "")
}

// sshScript looks at the booted system from inside.
const sshScript = `echo "HOST=$(hostname)"
echo "MARKERFILE=$(sudo cat /root/byoi-marker)"
dev=$(sudo blkid -t LABEL=config-2 -o device | head -1)
echo "CD_DEV=$dev"
echo "CD_TYPE=$(sudo blkid -s TYPE -o value "$dev")"
sudo mkdir -p /run/byoi-cd && sudo mount -o ro "$dev" /run/byoi-cd 2>/dev/null \
  && echo "CD_META=$(sudo cat /run/byoi-cd/openstack/latest/meta_data.json | tr -d '\n')" && sudo umount /run/byoi-cd
echo "ROOT=$(findmnt -no SOURCE /) $(lsblk -bno SIZE "$(findmnt -no SOURCE /)")"
lsblk -o NAME,SIZE,FSTYPE,LABEL /dev/vda | sed 's/^/LSBLK /'
echo "SYSTEMD=$(systemd-analyze 2>/dev/null | head -1)"
echo "CI_QUERY=$(sudo cloud-init query ds.meta_data.meta 2>/dev/null | tr -d ' \n')"
`

// run boots the disk (a qcow2 overlay over it) and waits for cloud-init's
// final message and the login prompt (or the time limit; or 120 s after the
// prompt without a final message; or, failFast, a prompt with another
// hostname), then checks the console and, when all passed, the system
// over SSH.
func (b *boot) run(ctx context.Context) {
	r := b.r
	dir := filepath.Join(r.c.work, "boot-"+b.name)
	fail := func(err error) {
		b.check("boot", false, "%v", err)
		b.report.Fail("boot on "+b.fw, "%s", strings.Join(b.fails, " "))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fail(err)
		return
	}
	overlay := filepath.Join(dir, "overlay.qcow2")
	if _, err := harness.Run(ctx, time.Minute, "qemu-img", "create", "-q", "-f", "qcow2", "-b", b.disk, "-F", "raw", overlay); err != nil {
		fail(err)
		return
	}
	port, err := harness.FreePort()
	if err != nil {
		fail(err)
		return
	}
	m := &harness.Machine{Name: b.name, Dir: dir, Firmware: b.fw, Memory: 1024, NoReboot: true, HostCPU: -1,
		NetDev:  fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
		NIC:     "virtio-net-pci,netdev=n0",
		Devices: []string{"virtio-rng-pci"},
		Drives:  []harness.Drive{{File: overlay, Format: "qcow2", If: "virtio"}}}
	if err := m.PrepareUEFIVars(); err != nil {
		fail(err)
		return
	}
	log.Info("[%s] booting %s (ssh on 127.0.0.1:%d, console %s/console-1.log, limit %s)", b.name, b.fw, port, dir, r.c.timeout)
	t0 := time.Now()
	if err := m.Start(); err != nil {
		fail(err)
		return
	}
	defer m.Stop()
	var final, prompt, state string
	var tPrompt time.Time
	for {
		if err := harness.Sleep(ctx, 2*time.Second); err != nil {
			state = "interrupted"
			break
		}
		clog := console(m.Console())
		final = finalRE.FindString(clog)
		prompt = ""
		if all := promptRE.FindAllString(clog, -1); len(all) > 0 {
			prompt = strings.TrimSuffix(all[len(all)-1], " login:")
		}
		if final != "" && prompt != "" {
			state = "finished"
			break
		}
		if prompt != "" && prompt != b.want && b.failFast {
			state = "wrong-hostname-failfast"
			break
		}
		if prompt != "" && tPrompt.IsZero() {
			tPrompt = time.Now()
		}
		if !tPrompt.IsZero() && time.Since(tPrompt) >= 120*time.Second {
			state = "no-cloud-init-final-120s-after-login-prompt"
			break
		}
		if !m.Running() {
			state = "qemu-exited"
			break
		}
		if time.Since(t0) >= r.c.timeout {
			state = "timeout"
			break
		}
	}
	elapsed := time.Since(t0)
	b.report.Time(b.fw+": "+state+" after", elapsed)
	if state == "timeout" || state == "qemu-exited" || state == "interrupted" {
		b.check("boot", false, "%s after %.0fs (no cloud-init final message and login prompt); last 50 console lines:\n%s", state, elapsed.Seconds(), harness.TailFile(m.Console(), 50))
		if state == "qemu-exited" {
			b.report.Evidence("qemu: %s", harness.TailFile(m.QEMULog(), 20))
		}
	}
	clog := console(m.Console())
	b.early = state == "wrong-hostname-failfast"
	if state == "no-cloud-init-final-120s-after-login-prompt" {
		b.check("cloud-init-finished", false, "no cloud-init final message 120 s after the login prompt")
	}
	b.check("marker", strings.Contains(clog, "BYOI-MARKER "+r.marker), "user data marker %s on the serial console", r.marker)
	b.check("datasource", datasourceRE.MatchString(final), "cloud-init finished with the ConfigDrive datasource: %s", orNone(final, "<no final message>"))
	b.check("hostname", prompt != "" && prompt == b.want, "login prompt shows '%s' (saw '%s')", b.want, orNone(prompt, "<none>"))
	b.check("ssh-key-fingerprint", authKeysRE.MatchString(clog) && strings.Contains(clog, r.keyFP), "cloud-init lists the test key %s for user debian", r.keyFP)

	if state == "finished" && len(b.fails) == 0 {
		b.overSSH(ctx, port)
	}
	b.early = false
	m.Stop()
	b.report.Time(b.fw+": total", time.Since(t0))
	if len(b.fails) == 0 {
		b.report.Pass("boot on "+b.fw, "every check passed")
	} else {
		b.report.Fail("boot on "+b.fw, "%s", strings.Join(b.fails, " "))
	}
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// overSSH logs in with the test key and looks at the system from inside.
func (b *boot) overSSH(ctx context.Context, port int) {
	r := b.r
	out, err := harness.SSH(ctx, r.key, port, "debian", sshScript, 10)
	b.report.Evidence("%s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n    "))
	if err != nil {
		b.check("ssh-login", false, "%v", err)
	} else {
		b.check("ssh-login", true, "ssh -i <test key> debian@127.0.0.1:%d works", port)
	}
	v := harness.Values(out)
	b.check("ssh-hostname", v["HOST"] == b.want, "hostname over ssh is '%s'", b.want)
	b.check("marker-file", v["MARKERFILE"] == r.marker, "/root/byoi-marker holds the marker")
	var meta struct {
		UUID string            `json:"uuid"`
		Meta map[string]string `json:"meta"`
	}
	metaOK := json.Unmarshal([]byte(v["CD_META"]), &meta) == nil
	b.check("configdrive-survives", (v["CD_TYPE"] == "iso9660" || v["CD_TYPE"] == "vfat") && metaOK && meta.UUID != "" && strings.Contains(v["CD_META"], b.want),
		"after first boot (growpart) config-2 is still readable: %s root %s", v["CD_DEV"], v["ROOT"])
	b.check("metadata-on-drive", metaOK && meta.Meta["marker"] == r.marker, "meta_data.json on config-2 carries userMetadatas as meta (marker=%s)", r.marker)
	b.check("metadata-in-cloud-init", strings.Contains(v["CI_QUERY"], `"marker":"`+r.marker+`"`), "cloud-init query ds.meta_data.meta shows the marker: %s", v["CI_QUERY"])
}
