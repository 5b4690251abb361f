// Package netboot holds what byoi-api serves to a server that boots from
// the network through iPXE: the iPXE scripts (the one every server's DHCP
// answer names, the rescue system's, the local disk's) and bootsel, the
// 512-byte legacy-BIOS network boot program that boots the deployed disk
// by its MBR signature or GPT disk GUID.
//
// Everything here is served over plain HTTP without authentication: the
// iPXE ROMs servers carry (Debian 12's are of 2019) have no HTTPS and
// cannot sign a request. The scripts hold no secret except the rescue
// script's agent token, which the control plane hands out once, when it
// expects the server to boot its rescue; every other asker gets
// NoTokenScript, the same bytes whoever asks.
//
// Why each firmware boots the local disk the way it does (proved in QEMU
// with Debian 12's iPXE ROMs, SeaBIOS and OVMF; see the control plane's
// README):
//
//   - legacy BIOS: iPXE's "exit" hands the boot to the BIOS, which boots
//     its first hard disk (drive 0x80): not necessarily the deployed one,
//     since the BIOS numbers disks in its own order. "sanboot --drive
//     0x8N" needs N, which the control plane cannot know. So the script
//     chains bootsel with the deployed disk's key (the agent reports it):
//     bootsel reads LBA 0-1 of every BIOS drive and boots the one that
//     matches, with DL set, whatever its number.
//   - UEFI: EFI iPXE's sanboot cannot boot a local disk (2019 ROMs), but
//     "exit" returns to the firmware's boot manager, which goes on with
//     the next BootOrder entry: the agent wrote one for the deployed
//     disk's bootloader right after the network entry (efiboot.Install),
//     so exit is all the script does.
package netboot

import (
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// bootselImage is bootsel.S assembled (the command is in bootsel.S);
// TestBootselRebuild checks it matches its source.
//
//go:embed bootsel.bin
var bootselImage []byte

// Where bootsel keeps its key (bootsel.S).
const (
	bootselMagicAt = 0x1C0 // "BSEL"
	bootselModeAt  = 0x1C4
	bootselKeyAt   = 0x1C5
	bootselKeyLen  = 16
	modeMBR        = 1
	modeGPT        = 2
)

// DiskKey identifies a deployed disk for bootsel: "mbr:" and the MBR disk
// signature (8 hex digits, the 4 bytes at LBA 0 + 440 as they are on
// disk), or "gpt:" and the GPT disk GUID (32 hex digits, the 16 bytes at
// LBA 1 + 56 as they are on disk): agentapi.BootInfo.DiskKey.
type DiskKey struct {
	Mode  byte // 1 MBR, 2 GPT
	Bytes []byte
}

// ParseDiskKey parses "mbr:<8 hex>" or "gpt:<32 hex>" (lower-case hex).
// An MBR signature of zero is refused: every blank disk has it.
func ParseDiskKey(s string) (DiskKey, error) {
	kind, h, ok := strings.Cut(s, ":")
	var k DiskKey
	var n int
	switch {
	case ok && kind == "mbr":
		k.Mode, n = modeMBR, 4
	case ok && kind == "gpt":
		k.Mode, n = modeGPT, 16
	default:
		return DiskKey{}, errors.New("netboot: a disk key is mbr:<8 hex digits> or gpt:<32 hex digits>")
	}
	if len(h) != 2*n || strings.ToLower(h) != h {
		return DiskKey{}, fmt.Errorf("netboot: a %s disk key has %d lower-case hex digits", kind, 2*n)
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return DiskKey{}, fmt.Errorf("netboot: a %s disk key has %d lower-case hex digits", kind, 2*n)
	}
	zero := true
	for _, c := range b {
		zero = zero && c == 0
	}
	if zero {
		return DiskKey{}, errors.New("netboot: a disk key of zero identifies no disk")
	}
	k.Bytes = b
	return k, nil
}

// String is the key's text form.
func (k DiskKey) String() string {
	if k.Mode == modeMBR {
		return "mbr:" + hex.EncodeToString(k.Bytes)
	}
	return "gpt:" + hex.EncodeToString(k.Bytes)
}

// Bootsel returns bootsel with key patched in: 512 bytes for iPXE to
// chain (it runs it as a PXE NBP).
func Bootsel(key DiskKey) []byte {
	b := append([]byte(nil), bootselImage...)
	b[bootselModeAt] = key.Mode
	copy(b[bootselKeyAt:bootselKeyAt+bootselKeyLen], key.Bytes)
	return b
}

// ChainScript is the iPXE script every server's DHCP answer names
// (bootURL + "/boot/boot.ipxe"): it asks for the server's own script by the
// MAC address of the NIC iPXE booted from.
func ChainScript(bootURL string) string {
	return "#!ipxe\n" +
		"echo byoi: ${netX/mac} asks " + bootURL + " how to boot\n" +
		"chain " + bootURL + "/boot/mac/${netX/mac:hexhyp}.ipxe\n"
}

// Rescue is what the rescue script needs.
type Rescue struct {
	// BootURL is where iPXE reaches byoi-api (plain HTTP).
	BootURL string
	// AgentURL is where the rescue agent reaches byoi-api (byoi.url=).
	AgentURL string
	// Server is the server's name, MAC the NIC it booted from
	// (aa:bb:cc:dd:ee:ff), Token the agent token minted for this boot.
	Server, MAC, Token string
	// Cmdline is added to the kernel command line (console=...).
	Cmdline string
}

// RescueScript boots the rescue system with the server's agent settings on
// the kernel command line. `quiet` keeps the kernel from printing its
// command line, token included, on the console; initrd=initrd.img is for
// the kernel's EFI stub under UEFI (the name iPXE gives the initrd image);
// BOOTIF tells the rescue's init which NIC to bring up.
func RescueScript(r Rescue) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("echo byoi: server " + r.Server + ": booting the rescue system\n")
	b.WriteString("kernel " + r.BootURL + "/boot/rescue/vmlinuz initrd=initrd.img quiet")
	if r.Cmdline != "" {
		b.WriteString(" " + r.Cmdline)
	}
	b.WriteString(" BOOTIF=01-" + strings.ReplaceAll(r.MAC, ":", "-"))
	b.WriteString(" byoi.url=" + r.AgentURL + " byoi.server=" + r.Server + " byoi.token=" + r.Token + "\n")
	b.WriteString("initrd " + r.BootURL + "/boot/rescue/initrd.img\n")
	b.WriteString("boot\n")
	return b.String()
}

// NoTokenScript boots the rescue system without an agent token: the
// answer to a MAC address no server has, and to one whose server is not
// expecting a rescue boot (its token was handed out already, its agent is
// alive, or nothing asked for rescue). It holds nothing of the asker (the
// NIC's MAC comes from iPXE's own ${netX/mac}): the same bytes for every
// MAC, so that it tells no registered MAC from an unknown one and names no
// server. byoi.notoken=1 makes the rescue's init say on the console why it
// has no token.
func NoTokenScript(bootURL, cmdline string) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("echo byoi: no agent token for this boot (see the rescue's console)\n")
	b.WriteString("kernel " + bootURL + "/boot/rescue/vmlinuz initrd=initrd.img quiet")
	if cmdline != "" {
		b.WriteString(" " + cmdline)
	}
	b.WriteString(" BOOTIF=01-${netX/mac:hexhyp} byoi.notoken=1\n")
	b.WriteString("initrd " + bootURL + "/boot/rescue/initrd.img\n")
	b.WriteString("boot\n")
	return b.String()
}

// DiskScript sends the server to its local disk: under UEFI by exiting to
// the firmware (the agent's boot entry comes next in BootOrder); under
// legacy BIOS through bootsel when the deployed disk's key is known (key
// not nil), else by exiting to the BIOS (its first hard disk). It names
// no server.
func DiskScript(bootURL string, key *DiskKey) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("echo byoi: booting its local disk\n")
	b.WriteString("iseq ${platform} pcbios || exit\n")
	if key != nil {
		b.WriteString("chain " + bootURL + "/boot/bootsel/" + strings.Replace(key.String(), ":", "-", 1) + ".bin || exit\n")
	}
	b.WriteString("exit\n")
	return b.String()
}

// SafeURL reports whether u can be written into an iPXE script and a
// kernel command line as it is: http(s), no white space, no quote, no
// '$' (iPXE expands ${...}), no control character.
func SafeURL(u string) bool {
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") || len(u) > 512 {
		return false
	}
	for _, c := range u {
		if c <= ' ' || c == 0x7f || c > 0x7e || strings.ContainsRune(`"'$\`+"`", c) {
			return false
		}
	}
	return true
}
