/* A 446-byte legacy BIOS boot sector for the PXE prototype: prints the marker string
 * patched in at offset 0x100 (run.sh writes "BYOI-...-MARKER <disk>" there) and the BIOS
 * drive number it was started with (DL) on COM1, then halts. Build: as --32 + ld -Ttext 0x7c00 --oformat binary. */
	.code16
	.globl _start
_start:
	cli
	xorw %ax, %ax
	movw %ax, %ds
	movw %ax, %ss
	movw $0x7c00, %sp
	sti
	movb %dl, drive          /* the BIOS drive number we were booted from */
	movw $msg, %si
1:	lodsb
	testb %al, %al
	jz 3f
	call putc
	jmp 1b
3:	/* " drive=0xNN\r\n" */
	movw $dmsg, %si
4:	lodsb
	testb %al, %al
	jz 5f
	call putc
	jmp 4b
5:	movb drive, %al
	shrb $4, %al
	call hex
	movb drive, %al
	andb $0x0f, %al
	call hex
	movb $'\r', %al
	call putc
	movb $'\n', %al
	call putc
6:	cli
	hlt
	jmp 6b

hex:	addb $'0', %al
	cmpb $'9', %al
	jbe putc
	addb $7, %al
putc:	pushw %ax
	movw $0x3fd, %dx        /* COM1 line status: wait for THR empty */
7:	inb %dx, %al
	testb $0x20, %al
	jz 7b
	popw %ax
	movw $0x3f8, %dx
	outb %al, %dx
	ret

drive:	.byte 0
dmsg:	.asciz " drive=0x"
	.org 0x100
msg:	.asciz "BYOI-BIOS-MARKER (unpatched)"
	.org 446
