//go:build !linux

package drivers

import "errors"

func finitModule(path string) error { return errors.New("loading kernel modules needs Linux") }
