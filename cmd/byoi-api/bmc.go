package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/byoi/byoi/controlplane/power"
)

// stdin is where a BMC password is read from without --password-file or
// --password-env (tests replace it).
var stdin io.Reader = os.Stdin

// bmcFlags is the power driver of --bmc and its password (--password-file,
// --password-env, else stdin). No --bmc: none when required is false.
// Errors never repeat the password.
func bmcFlags(f *adminFlags, required bool) (power.BMC, power.Password, error) {
	if f.bmc == "" {
		if required {
			return power.BMC{}, power.Password{}, errors.New("--bmc is missing: none or ipmi://USER@HOST[:623]")
		}
		if f.passwordFile != "" || f.passwordEnv != "" {
			return power.BMC{}, power.Password{}, errors.New("--password-file and --password-env go with --bmc")
		}
		return power.BMC{Driver: power.DriverNone}, power.Password{}, nil
	}
	spec, err := power.ParseBMC(f.bmc)
	if err != nil {
		return power.BMC{}, power.Password{}, err
	}
	if spec.IsNone() {
		if f.passwordFile != "" || f.passwordEnv != "" {
			return power.BMC{}, power.Password{}, errors.New("--bmc none takes no password")
		}
		return spec, power.Password{}, nil
	}
	var pw power.Password
	switch {
	case f.passwordFile != "" && f.passwordEnv != "":
		return power.BMC{}, power.Password{}, errors.New("give the BMC password with --password-file or --password-env, not both")
	case f.passwordEnv != "":
		v, ok := os.LookupEnv(f.passwordEnv)
		if !ok {
			return power.BMC{}, power.Password{}, fmt.Errorf("the environment variable %s is not set", f.passwordEnv)
		}
		pw, err = power.NewPassword(v)
	case f.passwordFile != "" && f.passwordFile != "-":
		var fh *os.File
		fh, err = os.Open(f.passwordFile)
		if err != nil {
			return power.BMC{}, power.Password{}, fmt.Errorf("the BMC password file: %w", err)
		}
		defer fh.Close()
		pw, err = power.ReadPassword(fh)
	default:
		pw, err = power.ReadPassword(stdin)
	}
	if err != nil {
		return power.BMC{}, power.Password{}, err
	}
	return spec, pw, nil
}
