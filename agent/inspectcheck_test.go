package agent

import (
	"bytes"
	"compress/gzip"
	"testing"

	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/job"
)

// TestInspectChecksStreamedHead: a compressed raw image is read as a
// stream: its head gives the boot-mode verdict (a refusal is a problem),
// and its filesystems are said "not examined" (issue 26).
func TestInspectChecksStreamedHead(t *testing.T) {
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(noESPImage(t, true))
	w.Close()
	r := inspInspect(t, gz.Bytes(), InspectOptions{Facts: imagecheck.Facts{BootMode: imagecheck.BootUEFI}})
	if !inspHasProblem(r, job.Text(job.CheckUEFINoESP)) {
		t.Errorf("problems %v", r.Problems)
	}
	if r.Checks == nil {
		t.Fatal("no checks")
	}
	var refused, noted bool
	for _, f := range r.Checks.Findings {
		refused = refused || f.Code == job.CheckUEFINoESP && f.Severity == imagecheck.Refuse
		noted = noted || f.Code == job.CheckNotExamined && f.Severity == imagecheck.Note
	}
	if !refused || !noted {
		t.Errorf("findings %v", r.Checks.Findings)
	}
	// With the checks off: neither.
	r = inspInspect(t, gz.Bytes(), InspectOptions{Facts: imagecheck.Facts{BootMode: imagecheck.BootUEFI}, NoChecks: true})
	if r.Checks != nil || inspHasProblem(r, job.Text(job.CheckUEFINoESP)) {
		t.Errorf("checks off: %v %v", r.Checks, r.Problems)
	}
}
