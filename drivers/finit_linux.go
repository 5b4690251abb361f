package drivers

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// finitModule loads a module file with finit_module(2); a compressed one
// (.ko.xz, .ko.zst, .ko.gz) is handed to the kernel to decompress
// (MODULE_INIT_COMPRESSED_FILE, Linux 5.17+).
func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", path, os.ErrExist)
		}
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}
