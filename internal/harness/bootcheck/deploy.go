package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/byoi/byoi/internal/harness"
)

// source is an image on the file server.
type source struct{ url, sha, typ string }

// job is the deployment job of a case in OVH's legacy shape
// (bringYourOwnImage) or reinstall shape (operatingSystem byoi_64 +
// customizations).
func (r *runner) job(withCD bool, shape string, src source) map[string]any {
	userData := harness.MarkerUserData("boot-check", r.marker)
	if shape == "reinstall" {
		c := map[string]any{"imageURL": src.url, "imageType": src.typ, "imageCheckSum": src.sha, "imageCheckSumType": "sha256"}
		if withCD {
			c["hostname"], c["sshKey"], c["configDriveUserData"] = r.host, r.key.Public, userData
			c["configDriveMetadata"] = map[string]string{"byoi-test": "boot-check", "marker": r.marker}
		}
		return map[string]any{"operatingSystem": "byoi_64", "customizations": c, "storage": []map[string]any{{"diskGroupId": 0}}}
	}
	j := map[string]any{"URL": src.url, "type": src.typ, "checkSum": src.sha, "checkSumType": "sha256", "description": "byoi boot-check"}
	if withCD {
		j["configdrive"] = map[string]any{"enable": true, "hostname": r.host, "sshKey": r.key.Public, "userData": userData,
			"userMetadatas": []map[string]string{{"key": "byoi-test", "value": "boot-check"}, {"key": "marker", "value": r.marker}}}
	}
	return j
}

// byoiBinary is BYOI_BIN, or cmd/byoi of this tree built once.
func (r *runner) byoiBinary(ctx context.Context) (string, error) {
	if r.byoi != "" {
		return r.byoi, nil
	}
	if r.c.byoiBin != "" {
		r.byoi = r.c.byoiBin
		return r.byoi, nil
	}
	log.Info("building byoi (CGO_ENABLED=0 go build ./cmd/byoi) ...")
	out := filepath.Join(r.c.work, "byoi")
	if err := harness.GoBuild(ctx, r.c.repo, "./cmd/byoi", out, filepath.Join(r.c.work, "go-build.log")); err != nil {
		return "", err
	}
	r.byoi = out
	return out, nil
}

// deploy writes the case's job and deploys it onto a new blank 8 GiB
// disk with byoi deploy (or, for development, by hand), then has sgdisk
// judge the table it left. A deploy that fails ends the run (setup error).
func (r *runner) deploy(ctx context.Context, name string, withCD bool, shape string, src source) (string, error) {
	disk := filepath.Join(r.c.work, "disk-"+name+".img")
	jobPath := filepath.Join(r.c.work, "job-"+name+".json")
	b, _ := json.MarshalIndent(r.job(withCD, shape, src), "", " ")
	if err := os.WriteFile(jobPath, b, 0o600); err != nil {
		return "", err
	}
	if err := harness.MakeSparse(disk, 8<<30); err != nil {
		return "", err
	}
	logPath := filepath.Join(r.c.work, "deploy-"+name+".log")
	t0 := time.Now()
	how := fmt.Sprintf("byoi deploy (%s job, %s)", shape, src.typ)
	var err error
	if r.c.prepare == "manual" {
		log.Info("DEVELOPMENT ONLY: BOOT_CHECK_PREPARE=manual, preparing %s without byoi", name)
		how = "manual (dev)"
		err = r.manualPrepare(ctx, withCD, src, disk, logPath)
	} else {
		var bin string
		if bin, err = r.byoiBinary(ctx); err != nil {
			return "", err
		}
		err = deployWith(ctx, bin, jobPath, disk, logPath, r.c.deployArgs)
	}
	if err != nil {
		fmt.Println(harness.TailFile(logPath, 30))
		return "", fmt.Errorf("deploy[%s]: %w", name, err)
	}
	log.Say("PASS deploy[%s]: %s in %.0f s", name, how, time.Since(t0).Seconds())
	// An independent judge of the table byoi left behind.
	out, _ := exec.CommandContext(ctx, "sgdisk", "-v", disk).CombinedOutput()
	if strings.Contains(string(out), "No problems found") {
		log.Say("PASS deploy[%s]: sgdisk -v finds no problems (backup GPT at the end of the disk)", name)
	} else {
		log.Say("%s", harness.TailLines(string(out), 5))
		log.Say("FAIL deploy[%s]: sgdisk -v reports problems", name)
		r.failed = append(r.failed, "deploy["+name+"]:gpt")
	}
	if p, err := harness.Output(ctx, time.Minute, "sgdisk", "-p", disk); err == nil {
		if i := strings.Index(p, "Number"); i >= 0 {
			log.Info("partitions of %s:\n%s", filepath.Base(disk), indent(p[i:]))
		}
	}
	return disk, nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func deployWith(ctx context.Context, bin, jobPath, disk, logPath string, extra []string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, bin, append([]string{"deploy", "--job", jobPath, "--disk", disk}, extra...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("byoi deploy: %w", err)
	}
	return nil
}

// manualPrepare (DEVELOPMENT ONLY, BOOT_CHECK_PREPARE=manual) does what
// byoi deploy is meant to do with stock tools (qemu-img, sgdisk, xorriso,
// dd), which proves the QEMU half of the check on its own.
func (r *runner) manualPrepare(ctx context.Context, withCD bool, src source, disk, logPath string) error {
	if src.typ != "qcow2" {
		return fmt.Errorf("manual preparation handles qcow2 only")
	}
	dl := filepath.Join(r.c.work, "dl.qcow2")
	if err := download(ctx, src.url, dl); err != nil {
		return err
	}
	defer os.Remove(dl)
	if sum, err := harness.SHA256File(dl); err != nil || sum != src.sha {
		return fmt.Errorf("downloaded image: sha256 %s, want %s (%v)", sum, src.sha, err)
	}
	steps := [][]string{{"qemu-img", "convert", "-f", "qcow2", "-O", "raw", dl, disk}, {"truncate", "-s", "8G", disk}, {"sgdisk", "-e", disk}}
	for _, s := range steps {
		if _, err := harness.Run(ctx, 10*time.Minute, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if !withCD {
		return nil
	}
	cd := filepath.Join(r.c.work, "cd", "openstack", "latest")
	os.RemoveAll(filepath.Join(r.c.work, "cd"))
	if err := os.MkdirAll(cd, 0o755); err != nil {
		return err
	}
	md, _ := json.Marshal(map[string]any{"uuid": harness.RandHex(16), "hostname": r.host, "name": r.host,
		"public_keys": map[string]string{"byoi": r.key.Public}, "meta": map[string]string{"byoi-test": "boot-check", "marker": r.marker}})
	if err := os.WriteFile(filepath.Join(cd, "meta_data.json"), md, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cd, "user_data"), []byte(harness.MarkerUserData("boot-check", r.marker)), 0o644); err != nil {
		return err
	}
	iso := filepath.Join(r.c.work, "cd.iso")
	if _, err := harness.Run(ctx, time.Minute, "xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "config-2", "-o", iso, filepath.Join(r.c.work, "cd")); err != nil {
		return err
	}
	st, err := os.Stat(disk)
	if err != nil {
		return err
	}
	end := st.Size()/512 - 34
	start := (end - 131072) / 2048 * 2048
	if _, err := harness.Run(ctx, time.Minute, "sgdisk", "-n", fmt.Sprintf("0:%d:%d", start, end), "-t", "0:0700", "-c", "0:config-2", disk); err != nil {
		return err
	}
	_, err = harness.Run(ctx, time.Minute, "dd", "if="+iso, "of="+disk, "bs=512", fmt.Sprintf("seek=%d", start), "conv=notrunc,sparse", "status=none")
	return err
}

func download(ctx context.Context, url, out string) error {
	_, err := harness.Run(ctx, 10*time.Minute, "curl", "-fsS", "-o", out, url)
	return err
}

// makeOVA packs the test image as an OVA: OVF descriptor, SHA256 manifest,
// streamOptimized VMDK (qemu-img writes it), in VMware's member order (ovf,
// mf, vmdk).
func makeOVA(ctx context.Context, image, out, dir string) error {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	vmdk := filepath.Join(dir, "disk1.vmdk")
	if _, err := harness.Run(ctx, 10*time.Minute, "qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized", image, vmdk); err != nil {
		return err
	}
	info, err := harness.Output(ctx, time.Minute, "qemu-img", "info", "--output=json", image)
	if err != nil {
		return err
	}
	var qi struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(info), &qi); err != nil {
		return fmt.Errorf("qemu-img info: %w", err)
	}
	ovf := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="disk1.vmdk"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="%d"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="byoi-boot-check"><Info>boot-check</Info>
    <VirtualHardwareSection><Info>hardware</Info>
      <Item><rasd:ElementName>disk1</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:AddressOnParent>0</rasd:AddressOnParent></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, qi.VirtualSize)
	ovfPath := filepath.Join(dir, "vm.ovf")
	if err := os.WriteFile(ovfPath, []byte(ovf), 0o644); err != nil {
		return err
	}
	var mf strings.Builder
	for _, f := range []string{"vm.ovf", "disk1.vmdk"} {
		sum, err := harness.SHA256File(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		fmt.Fprintf(&mf, "SHA256(%s)= %s\n", f, sum)
	}
	if err := os.WriteFile(filepath.Join(dir, "vm.mf"), []byte(mf.String()), 0o644); err != nil {
		return err
	}
	return writeTar(out, dir, "vm.ovf", "vm.mf", "disk1.vmdk")
}

// writeTar writes the files of dir, in order, to a new tar file.
func writeTar(out, dir string, names ...string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, n := range names {
		src, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		st, err := src.Stat()
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: st.Size(), ModTime: st.ModTime(), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR})
		}
		if err == nil {
			_, err = io.Copy(tw, src)
		}
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
