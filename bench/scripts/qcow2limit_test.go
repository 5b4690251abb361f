// Package scripts_test runs the benchmark scripts scaled down: what they
// check (the deployed bytes equal the image, each peer's output too) is
// checked in every suite run; their ratios are measured on a quiet
// machine (README) and only printed here.
package scripts_test

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// TestQcow2LimitScaled runs bench/bench-qcow2-limit.sh on a 128 MiB image
// (one run of each stage and deploy, zstd and zlib): every deploy's output
// is compared with the image by the script (cmp), and a streamed deploy's
// peak RSS stays under 64 MiB (issue 27).
func TestQcow2LimitScaled(t *testing.T) {
	testutil.RequireCommand(t, "go", "qemu-img", "curl", "sha256sum", "sgdisk", "genisoimage", "/usr/bin/time")
	cmd := exec.CommandContext(t.Context(), "bash", "../bench-qcow2-limit.sh")
	cmd.Env = append(os.Environ(), "RUNS=1", "SIZE=128M", "DATA=32M")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench-qcow2-limit.sh: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	s := string(out)
	for _, f := range []string{"zstd", "zlib"} {
		if !strings.Contains(s, "== "+f+": ") {
			t.Fatalf("no %s section", f)
		}
	}
	// "byoi  wall cpu rss" lines of the medians, one per format.
	re := regexp.MustCompile(`(?m)^(byoi|byoi-cd) +([0-9.]+) +([0-9.]+) +([0-9]+)$`)
	m := re.FindAllStringSubmatch(s, -1)
	if len(m) != 4 {
		t.Fatalf("found %d byoi median lines, want 4", len(m))
	}
	for _, l := range m {
		rss, _ := strconv.Atoi(l[4])
		if rss <= 0 || rss > 64<<10 {
			t.Errorf("%s peak RSS %d KiB, want under 64 MiB", l[1], rss)
		}
	}
	for _, r := range []string{"byoi / limit", "byoi / peers", "byoi-cd / operator"} {
		if c := strings.Count(s, r); c != 2 {
			t.Errorf("%q printed %d times, want 2", r, c)
		}
	}
}
