// Command byoi installs a customer's own disk image (qcow2 or raw) on a
// bare-metal server: download, verify, convert, write, fix the GPT, add the
// config-2 ConfigDrive, reboot. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
