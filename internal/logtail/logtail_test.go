package logtail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/byoi/byoi/internal/testutil"
)

const agentToken = "Zq8vT3kLp0Wm5Rj2Xc7Nb4Hd"

// cmdline is what a rescue boot's kernel logs, twice, even with quiet.
const cmdline = "BOOT_IMAGE=vmlinuz quiet console=ttyS0 byoi.url=http://10.0.0.1:8080 byoi.server=ns1.example byoi.token=" + agentToken + " ip=dhcp"

// The same boot in the three shapes a kernel log comes in.
var (
	dmesgText = "[    0.000000] Linux version 6.1.0-28-cloud-amd64\n" +
		"[    0.000000] Command line: " + cmdline + "\n" +
		"[    0.012345] Kernel command line: " + cmdline + "\n" +
		"[    1.500000] nvme nvme0: 4/0/0 default/read/poll queues\n"
	kmsgText = "5,0,0,-;Linux version 6.1.0-28-cloud-amd64\n" +
		"6,1,0,-;Command line: " + cmdline + "\n" +
		"5,2,12345,-;Kernel command line: " + cmdline + "\n" +
		"6,3,1500000,-;nvme nvme0: 4/0/0 default/read/poll queues\n" +
		" SUBSYSTEM=nvme\n" +
		" DEVICE=c259:0\n"
	syslogText = "<5>[    0.000000] Linux version 6.1.0-28-cloud-amd64\n" +
		"<6>[    0.000000] Command line: " + cmdline + "\n" +
		"<5>[    0.012345] Kernel command line: " + cmdline + "\n" +
		"<6>[    1.500000] nvme nvme0: 4/0/0 default/read/poll queues\n"
)

// TestKernelCommandLineToken: byoi.token= is gone from "Kernel command
// line:" in every shape of the log, whether or not the caller names the
// token, and the rest of the line stays.
func TestKernelCommandLineToken(t *testing.T) {
	for name, in := range map[string]string{"dmesg": dmesgText, "kmsg": kmsgText, "syslog": syslogText} {
		for _, secrets := range [][]string{nil, {agentToken}} {
			tail, err := From(t.Context(), strings.NewReader(in), Options{Secrets: secrets})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(tail.Text, agentToken) || strings.Contains(tail.Text, agentToken[:8]) {
				t.Fatalf("%s: the token is in the tail:\n%s", name, tail.Text)
			}
			want := dmesgText
			want = strings.ReplaceAll(want, "byoi.token="+agentToken, "byoi.token="+Marker)
			if tail.Text != want {
				t.Errorf("%s (secrets %v):\n%s\nwant\n%s", name, secrets != nil, tail.Text, want)
			}
			if tail.Lines != 4 || tail.Omitted != 0 || tail.Redacted != 2 || tail.Truncated {
				t.Errorf("%s: %+v", name, tail)
			}
		}
	}
}

// TestSecretsRemoved: the caller's secrets (a header value, the user data
// line by line, a token) and the built-in patterns disappear wherever they
// are; other text stays.
func TestSecretsRemoved(t *testing.T) {
	header := "Bearer sk-live-9f8e7d6c5b4a"
	userData := "#cloud-config\npassword: hunter2hunter2\nchpasswd: { expire: False }\nruncmd:\n  - curl -H 'X-Key: zzTopSecretZZ' https://x\n"
	log := strings.Join([]string{
		`level=INFO msg="downloading" header="` + header + `"`,
		"user data echo: hunter2hunter2 and zzTopSecretZZ in one line",
		"GET /image Authorization: Basic dXNlcjpwYXNz",
		"Cookie: session=abcdef0123456789",
		`{"agentToken":"` + agentToken + `","status":"error"}`,
		"retrying with access_token=eyJhbGciOi.payload.sig done",
		"password=\"quoted secret\" next",
		"nothing secret here: tokenless=1 keymap=us",
		"token-" + agentToken + "-suffix",
	}, "\n") + "\n"
	tail, err := From(t.Context(), strings.NewReader(log), Options{Secrets: []string{header, userData, agentToken, "ab"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{header, "sk-live", "hunter2", "zzTopSecret", "dXNlcjpwYXNz", "abcdef0123456789", agentToken, "eyJhbGciOi", "quoted secret"} {
		if strings.Contains(tail.Text, s) {
			t.Errorf("%q is still in the tail:\n%s", s, tail.Text)
		}
	}
	for _, s := range []string{`msg="downloading"`, "user data echo:", "in one line", "GET /image Authorization: " + Marker, `"status":"error"`,
		"nothing secret here: tokenless=1 keymap=us", "token-" + Marker + "-suffix", " done", " next"} {
		if !strings.Contains(tail.Text, s) {
			t.Errorf("%q was lost:\n%s", s, tail.Text)
		}
	}
	t.Logf("%d redactions:\n%s", tail.Redacted, tail.Text)
}

// TestBounds: whatever comes in, the tail keeps at most MaxBytes and
// MaxLines, ends with the last line, reads at most MaxRead, leaves out
// over-long lines whole, and stops when the context ends.
func TestBounds(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 50000; i++ {
		fmt.Fprintf(&b, "[%5d.000000] line %d byoi.token=%s\n", i, i, agentToken)
	}
	tail, err := From(t.Context(), strings.NewReader(b.String()), Options{MaxBytes: 4096, MaxLines: 30})
	if err != nil {
		t.Fatal(err)
	}
	if len(tail.Text) > 4096 || tail.Lines != 30 || tail.Omitted != 50000-30 || !strings.HasSuffix(tail.Text, "line 49999 byoi.token="+Marker+"\n") {
		t.Errorf("%d bytes, %d lines, %d omitted; ends %q", len(tail.Text), tail.Lines, tail.Omitted, tail.Text[max(0, len(tail.Text)-60):])
	}
	tail, _ = From(t.Context(), strings.NewReader(b.String()), Options{MaxBytes: 1000})
	if len(tail.Text) > 1000 || tail.Lines == 0 {
		t.Errorf("MaxBytes 1000: %d bytes, %d lines", len(tail.Text), tail.Lines)
	}

	// A 10 MiB line holding the token at its end, between two lines.
	long := "first\n" + strings.Repeat("A", 10<<20) + " " + agentToken + "\nlast\n"
	tail, _ = From(t.Context(), strings.NewReader(long), Options{})
	if tail.Text != "first\n[a line of 10485786 bytes was left out]\nlast\n" {
		t.Errorf("a 10 MiB line: %q", tail.Text[:min(200, len(tail.Text))])
	}

	// An endless source stops at MaxRead.
	start := time.Now()
	tail, err = From(t.Context(), endless{}, Options{MaxRead: 8 << 20})
	if err != nil || !tail.Truncated || tail.Lines == 0 || len(tail.Text) > DefaultMaxBytes {
		t.Errorf("endless: %v %+v", err, tail.Lines)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("endless: %v", el)
	}
	// ... or when the context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err = From(ctx, slow{}, Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow source: %v", err)
	}

	// A last line too long for MaxBytes is cut after redaction: no part
	// of the secret survives the cut.
	line := strings.Repeat("x", 100) + " token=" + agentToken + " " + strings.Repeat("y", 5)
	for n := 5; n < len(line); n++ {
		tail, _ := From(t.Context(), strings.NewReader(line+"\n"), Options{MaxBytes: n, Secrets: []string{agentToken}})
		if len(tail.Text) > n || strings.Contains(tail.Text, agentToken[len(agentToken)-4:]) {
			t.Fatalf("MaxBytes %d: %q", n, tail.Text)
		}
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "kernel: a line\n"[i%15]
	}
	return len(p), nil
}

type slow struct{}

func (slow) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	copy(p, "x\n")
	return min(len(p), 2), nil
}

// TestBuffer: the agent's own log, through an io.Writer that keeps its
// end; a first line cut by the buffer's limit is dropped, since it may
// start inside a secret.
func TestBuffer(t *testing.T) {
	b := NewBuffer(64)
	fmt.Fprintf(b, "old line 1\n")
	fmt.Fprintf(b, "the agent got token %s here\n", agentToken)
	fmt.Fprintf(b, "deployment failed: Bad sha256\n")
	tail := b.Tail(Options{Secrets: []string{agentToken}})
	if tail.Text != "deployment failed: Bad sha256\n" || tail.Omitted != 1 {
		t.Errorf("tail %q (%+v)", tail.Text, tail)
	}
	b = NewBuffer(0)
	fmt.Fprintf(b, "a\nb token=%s\n", agentToken)
	if tail := b.Tail(Options{}); tail.Text != "a\nb token="+Marker+"\n" {
		t.Errorf("tail %q", tail.Text)
	}
	b = NewBuffer(8)
	b.Write([]byte("0123456789abcdef")) // one write larger than the buffer
	if tail := b.Tail(Options{}); tail.Text != "" {
		t.Errorf("a cut single line: %q", tail.Text)
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"plain\ttab":          "plain\ttab",
		"bell\x07 del\x7f":    `bell\x07 del\x7f`,
		"bad \xff utf8":       "bad \uFFFD utf8",
		"c1 \u0085 ls \u2028": `c1 \x85 ls \x2028`,
		"ünïcode ok":          "ünïcode ok",
		"cr\rhere":            `cr\x0dhere`,
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRealKernelLog reads this machine's kernel log (read only) and
// compares it with dmesg, the judge.
func TestRealKernelLog(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "dmesg")
	if _, err := os.Stat("/dev/kmsg"); err != nil {
		testutil.Unavailable(t, "no /dev/kmsg: %v", err)
	}
	judge := strings.Split(testutil.Run(t, "dmesg"), "\n")
	big := Options{MaxBytes: 8 << 20, MaxLines: 1 << 20}
	for name, read := range map[string]func() (Tail, error){
		"kmsg":   func() (Tail, error) { return Kernel(t.Context(), big) },
		"syslog": func() (Tail, error) { return klog(t.Context(), big, errors.New("not tried")) },
	} {
		tail, err := read()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := strings.Split(tail.Text, "\n")
		if tail.Lines == 0 || !utf8.ValidString(tail.Text) {
			t.Fatalf("%s: %d lines", name, tail.Lines)
		}
		// The tail's last lines are dmesg's (time stamps aside): the
		// syslog interface reads a ring smaller than /dev/kmsg's store,
		// so on a machine with a long log its first lines are not
		// dmesg's first ones, and records may arrive in between.
		inJudge := map[string]bool{}
		for _, l := range judge {
			inJudge[stripStamp(l)] = true
		}
		same, last := 0, got[max(0, len(got)-11):]
		for _, l := range last {
			if l == "" || inJudge[stripStamp(l)] || strings.Contains(l, Marker) {
				same++
			}
		}
		if same < min(5, len(last)) {
			t.Errorf("%s: the last lines are not dmesg's:\n%s\n--- dmesg:\n%s", name,
				strings.Join(last, "\n"), strings.Join(judge[max(0, len(judge)-11):], "\n"))
		}
		t.Logf("%s: %d lines, %d omitted, %d redacted", name, tail.Lines, tail.Omitted, tail.Redacted)
	}
	// The default tail is bounded.
	tail, err := Kernel(t.Context(), Options{})
	if err != nil || len(tail.Text) > DefaultMaxBytes || tail.Lines > DefaultMaxLines {
		t.Errorf("default tail: %v, %d bytes, %d lines", err, len(tail.Text), tail.Lines)
	}
}

// FuzzTail: any input gives a bounded tail of valid UTF-8 without control
// characters, never a panic; a secret of capital letters (which no
// marker, escape or timestamp can form) never appears.
func FuzzTail(f *testing.F) {
	f.Add([]byte(dmesgText), agentToken)
	f.Add([]byte(kmsgText), "SECRET")
	f.Add([]byte(syslogText), "ABCD")
	f.Add([]byte("x\x00\xff\r\n"+strings.Repeat("Q", 300)+"\n\n \n"), "QQQQ")
	f.Add([]byte("6,1,99999999999999999999,-;overflow\n"), "ABCDEFGH")
	f.Fuzz(func(t *testing.T, data []byte, secret string) {
		o := Options{MaxBytes: 512, MaxLines: 16, MaxLine: 200, MaxRead: 4096, Secrets: []string{secret}}
		tail, err := From(context.Background(), bytes.NewReader(data), o)
		if err != nil {
			t.Fatal(err)
		}
		if len(tail.Text) > o.MaxBytes || tail.Lines > o.MaxLines || !utf8.ValidString(tail.Text) {
			t.Fatalf("%d bytes, %d lines, valid %v", len(tail.Text), tail.Lines, utf8.ValidString(tail.Text))
		}
		if strings.Count(tail.Text, "\n") != tail.Lines {
			t.Fatalf("%d lines counted, %d newlines", tail.Lines, strings.Count(tail.Text, "\n"))
		}
		for _, r := range tail.Text {
			if r < 0x20 && r != '\t' && r != '\n' || r == 0x7f {
				t.Fatalf("control character %q in %q", r, tail.Text)
			}
		}
		if len(secret) >= 4 && strings.Trim(secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" && strings.Contains(tail.Text, secret) {
			t.Fatalf("secret %q in %q", secret, tail.Text)
		}
		b := NewBuffer(300)
		b.Write(data)
		if bt := b.Tail(o); len(bt.Text) > o.MaxBytes {
			t.Fatalf("buffer tail of %d bytes", len(bt.Text))
		}
		_ = io.Discard
	})
}

// stripStamp drops a line's "[    0.000023] " time stamp: the syslog
// interface and dmesg may round the same record's time differently.
func stripStamp(l string) string {
	if strings.HasPrefix(l, "[") {
		if i := strings.Index(l, "] "); i > 0 {
			return l[i+2:]
		}
	}
	return l
}
