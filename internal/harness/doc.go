// Package harness is what byoi's QEMU checks share: QEMU machines shaped
// like servers (firmware, OVMF variables, NICs, disks behind controllers, a
// QMP socket for keys and power), their serial consoles and the waits on
// them, background processes that die with the check, SSH into a booted
// system, content digests of sparse disks, a file server on 127.0.0.1, the
// builds of the artefacts (byoi, the test image, the rescue system), named
// steps and the PASS/FAIL/TIME report lines.
//
// Its users are the checks' programs: bootcheck (scripts/boot-check.sh,
// the boot acceptance) and pxecheck (scripts/pxe-check.sh, network boot,
// deploy and reboot to disk). Network: servers listen on 127.0.0.1 only,
// and machines use QEMU's user-mode network only.
package harness
