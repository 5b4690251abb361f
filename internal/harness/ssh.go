package harness

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Key is an SSH key pair made for one run (ssh-keygen, ed25519).
type Key struct {
	Private string // the private key file
	Public  string // the public key line ("ssh-ed25519 AAAA... comment")
}

// NewKey makes a key pair at path (and path.pub).
func NewKey(ctx context.Context, path, comment string) (Key, error) {
	if _, err := Run(ctx, time.Minute, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path); err != nil {
		return Key{}, err
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		return Key{}, err
	}
	return Key{Private: path, Public: strings.TrimSpace(string(pub))}, nil
}

// CloudInitFingerprint is how cloud-init 22.4 prints a key it installed:
// the SHA-256 of the base64-decoded key blob, as hex pairs joined by ':'.
func CloudInitFingerprint(public string) (string, error) {
	f := strings.Fields(public)
	if len(f) < 2 {
		return "", fmt.Errorf("not an SSH public key line")
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return "", fmt.Errorf("SSH public key: %w", err)
	}
	sum := sha256.Sum256(blob)
	h := hex.EncodeToString(sum[:])
	pairs := make([]string, 0, len(h)/2)
	for i := 0; i < len(h); i += 2 {
		pairs = append(pairs, h[i:i+2])
	}
	return strings.Join(pairs, ":"), nil
}

// SSH runs a shell script as user@127.0.0.1:port with the key (the port a
// hostfwd of the machine's user-mode network), trying up to tries times 5 s
// apart (sshd may not listen yet). It returns the script's output.
func SSH(ctx context.Context, key Key, port int, user, script string, tries int) (string, error) {
	var out string
	var err error
	for try := 0; try < tries; try++ {
		if try > 0 {
			if err := Sleep(ctx, 5*time.Second); err != nil {
				return out, err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		cmd := exec.CommandContext(cctx, "ssh", "-i", key.Private, "-p", fmt.Sprint(port),
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR", user+"@127.0.0.1", "sh -s")
		cmd.Stdin = strings.NewReader(script)
		var b []byte
		b, err = cmd.CombinedOutput()
		cancel()
		out = string(b)
		if err == nil {
			return out, nil
		}
	}
	return out, fmt.Errorf("ssh -i <the test key> %s@127.0.0.1:%d: %v: %s", user, port, err, TailLines(out, 4))
}

// Values reads the KEY=value lines a check script printed.
func Values(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && k != "" && !strings.ContainsAny(k, " \t") {
			if _, seen := m[k]; !seen {
				m[k] = v
			}
		}
	}
	return m
}
