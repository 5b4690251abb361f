/* bootsel: a 512-byte PXE network boot program (NBP) for legacy BIOS that boots the local
 * disk holding a given MBR disk signature or GPT disk GUID, whatever number the BIOS gave it.
 *
 * byoi-api serves it (netboot.Bootsel, key patched in) to a server whose deployment is done:
 * its iPXE script says  chain http://CP/boot/bootsel/gpt-<key>.bin || exit
 * iPXE (any version with IMAGE_PXE, e.g. Debian 12's 2019 QEMU ROMs) loads it at 0000:7C00
 * and far-calls it. It copies itself to 0000:0600, reads LBA 0 and 1 of BIOS drives 0x80..
 * (count from the BDA, 0040:0075), and on a match loads that drive's boot sector at
 * 0000:7C00 and jumps to it with DL = the drive, like an MBR would. With no match it returns
 * to iPXE with AX=1 (the chain fails and the script goes on: "|| exit" hands the boot back to
 * the BIOS, which boots its first hard disk).
 *
 * The key, patched in by the control plane:
 *   0x1C0 "BSEL"   0x1C4 mode: 1 = MBR signature (4 bytes at LBA 0 + 440, as on disk),
 *                              2 = GPT disk GUID (16 bytes at LBA 1 + 56, as on disk)
 *   0x1C5 key (16 bytes; an MBR signature uses the first 4)
 * Messages go through int 10h (the screen, or SeaBIOS's serial console).
 * Limits: 512-byte sectors (CHS read of LBA 0-1); a key two disks share boots the lower
 * BIOS number; an MBR signature of 0 is no key.
 *
 * Rebuild bootsel.bin (committed; TestBootselRebuild compares when as and ld are there):
 *   as --32 -o bootsel.o bootsel.S && ld -m elf_i386 -Ttext 0x600 --oformat binary -o bootsel.bin bootsel.o
 */
	.code16
	.globl _start
	.set BUF, 0x7c00
_start:
	/* running at 0000:7C00, linked at 0000:0600: only absolute moves until the far jump */
	pushf
	pushw %ds
	pushw %es
	pusha
	xorw %ax, %ax
	movw %ax, %ds
	movw %ax, %es
	cld
	movw $0x7c00, %si
	movw $0x0600, %di
	movw $256, %cx
	rep movsw
	ljmp $0, $reloc
reloc:
	movw $hello, %si
	call puts
	movb 0x475, %cl          /* BDA: number of hard disks */
	testb %cl, %cl
	jz none
	movb $0x80, drive
	addb $0x80, %cl
	movb %cl, last
next:
	movb drive, %dl
	movw $0x0202, %ax        /* read 2 sectors: C0 H0 S1-2 = LBA 0 and 1 */
	movw $0x0001, %cx
	xorb %dh, %dh
	movw $BUF, %bx
	int $0x13
	jc skip
	cmpb $1, mode
	jne gpt
	movw $BUF+440, %di
	movw $key, %si
	movw $2, %cx
	repe cmpsw
	je found
	jmp skip
gpt:
	cmpb $2, mode
	jne skip
	cmpl $0x20494645, BUF+512    /* "EFI " */
	jne skip
	movw $BUF+512+56, %di
	movw $key, %si
	movw $8, %cx
	repe cmpsw
	je found
skip:
	incb drive
	movb drive, %al
	cmpb last, %al
	jb next
none:
	movw $nomatch, %si
	call puts
	popa
	popw %es
	popw %ds
	popf
	movw $1, %ax
	lret

found:
	cmpw $0xaa55, BUF+510
	jne skip
	movw $boot, %si
	call puts
	movb drive, %al
	call hexbyte
	movw $crlf, %si
	call puts
	cli
	xorw %ax, %ax
	movw %ax, %ss
	movw $0x7c00, %sp
	movw %ax, %ds
	movw %ax, %es
	sti
	movb drive, %dl
	ljmp $0, $0x7c00

hexbyte:
	pushw %ax
	shrb $4, %al
	call hexdigit
	popw %ax
	andb $0x0f, %al
hexdigit:
	addb $'0', %al
	cmpb $'9', %al
	jbe putc
	addb $7, %al
putc:
	pushw %bx
	movb $0x0e, %ah
	movw $0x0007, %bx
	int $0x10
	popw %bx
	ret
puts:
	lodsb
	testb %al, %al
	jz 1f
	call putc
	jmp puts
1:	ret

hello:	.asciz "bootsel: looking for the deployed disk\r\n"
nomatch: .asciz "bootsel: no disk matches\r\n"
boot:	.asciz "bootsel: booting BIOS drive 0x"
crlf:	.asciz "\r\n"
drive:	.byte 0
last:	.byte 0
	.org 0x1c0
	.ascii "BSEL"
mode:	.byte 0
key:	.fill 16, 1, 0
	.org 512
