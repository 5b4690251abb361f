package power

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestParseBMC(t *testing.T) {
	good := []struct {
		in   string
		want BMC
		str  string
	}{
		{"none", BMC{Driver: "none"}, "none"},
		{"ipmi://admin@10.0.0.5", BMC{"ipmi", "admin", "10.0.0.5", 623}, "ipmi://admin@10.0.0.5:623"},
		{"ipmi://admin@10.0.0.5:6230", BMC{"ipmi", "admin", "10.0.0.5", 6230}, "ipmi://admin@10.0.0.5:6230"},
		{"IPMI://ADMIN@BMC1.Example.COM", BMC{"ipmi", "ADMIN", "bmc1.example.com", 623}, "ipmi://ADMIN@bmc1.example.com:623"},
		{"ipmi://root@[fe80::1]:623", BMC{"ipmi", "root", "fe80::1", 623}, "ipmi://root@[fe80::1]:623"},
		{"ipmi://root@[2001:DB8::0001]", BMC{"ipmi", "root", "2001:db8::1", 623}, "ipmi://root@[2001:db8::1]:623"},
		{"ipmi://a%40b@host", BMC{"ipmi", "a@b", "host", 623}, "ipmi://a@b@host:623"},
		{"ipmi://a%3Ab@host", BMC{"ipmi", "a:b", "host", 623}, "ipmi://a:b@host:623"},
		{"ipmi://u@h.", BMC{"ipmi", "u", "h.", 623}, "ipmi://u@h.:623"},
		{"ipmi://sixteen-chars-ok@h:1", BMC{"ipmi", "sixteen-chars-ok", "h", 1}, "ipmi://sixteen-chars-ok@h:1"},
		{"ipmi://u@h:65535", BMC{"ipmi", "u", "h", 65535}, "ipmi://u@h:65535"},
	}
	for _, tc := range good {
		got, err := ParseBMC(tc.in)
		if err != nil {
			t.Errorf("ParseBMC(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseBMC(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		// String percent-encodes the user; the canonical form parses back.
		back, err := ParseBMC(got.String())
		if err != nil || back != got {
			t.Errorf("ParseBMC(%q.String()=%q) = %+v, %v", tc.in, got.String(), back, err)
		}
		if want := strings.ReplaceAll(strings.ReplaceAll(tc.str, "a@b@", "a%40b@"), "a:b@", "a%3Ab@"); got.String() != want {
			t.Errorf("String() = %q, want %q", got.String(), want)
		}
	}
	bad := []struct{ in, want string }{
		{"", "want \"none\""},
		{"NONE", "want \"none\""},
		{"admin@10.0.0.5", "want \"none\""},
		{"ipmi://10.0.0.5", "user is missing"},
		{"ipmi://@10.0.0.5", "user name is empty"},
		{"ipmi://admin:hunter2secret@10.0.0.5", "password does not belong"},
		{"ipmi://admin:@10.0.0.5", "password does not belong"},
		{"ipmi://a@b@10.0.0.5", "%40"},
		{"ipmi://ad%zzmin@h", "bad %-escape"},
		{"ipmi://seventeen-chars-no@h", "at most 16"},
		{"ipmi://ad min@h", "printable ASCII"},
		{"ipmi://ad%00min@h", "printable ASCII"},
		{"ipmi://admin@", "host is missing"},
		{"ipmi://admin@h:", "port after ':' is empty"},
		{"ipmi://admin@h:0", "1 to 65535"},
		{"ipmi://admin@h:65536", "1 to 65535"},
		{"ipmi://admin@h:+1", "1 to 65535"},
		{"ipmi://admin@h:0000000623", "1 to 65535"},
		{"ipmi://admin@h:6x", "1 to 65535"},
		{"ipmi://admin@fe80::1", "in brackets"},
		{"ipmi://admin@[fe80::1", "lacks its ']'"},
		{"ipmi://admin@[fe80::1%eth0]", "not an IPv6 address"},
		{"ipmi://admin@[10.0.0.1]", "not an IPv6 address"},
		{"ipmi://admin@[fe80::1]x", "unexpected text"},
		{"ipmi://admin@[fe80::1]:", "port after ':' is empty"},
		{"ipmi://admin@-h", "not a valid name"},
		{"ipmi://admin@h_1", "not a valid name"},
		{"ipmi://admin@a..b", "not a valid name"},
		{"ipmi://admin@h/path", "no path"},
		{"ipmi://admin@h?x=1", "no path"},
		{"ipmi://admin@h#f", "no path"},
		{"redfish://admin@h", "Redfish is not yet"},
		{"ftp://admin@h", "unknown driver"},
		{"ipmi://admin@" + strings.Repeat("a", 64) + ".example", "not a valid name"},
		{"ipmi://admin@" + strings.Repeat("a.", 160), "longer than"},
	}
	for _, tc := range bad {
		_, err := ParseBMC(tc.in)
		if err == nil {
			t.Errorf("ParseBMC(%q) accepted", tc.in)
			continue
		}
		if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseBMC(%q) = %v, want ErrBadSpec with %q", tc.in, err, tc.want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("ParseBMC(%q): the error repeats the password: %v", tc.in, err)
		}
	}
}

func TestNewAndReadPassword(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"s3cret\n", "s3cret"},
		{"s3cret\r\n", "s3cret"},
		{"s3cret", "s3cret"},
		{"twenty-bytes-exactly", "twenty-bytes-exactly"},
		{"sp ace\t\xff", "sp ace\t\xff"},
	} {
		p, err := ReadPassword(strings.NewReader(tc.in))
		if err != nil || p.Reveal() != tc.want {
			t.Errorf("ReadPassword(%q) = %q, %v", tc.in, p.Reveal(), err)
		}
	}
	for _, in := range []string{"", "\n", "hunter2\nline2\n", "hunter2-is-longer-than-20", "hun\x00ter2", "hunter2\r\r\n", strings.Repeat("x", 2000)} {
		_, err := ReadPassword(strings.NewReader(in))
		if !errors.Is(err, ErrBadPassword) {
			t.Errorf("ReadPassword(%q): %v, want ErrBadPassword", in, err)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "xxxx") {
			t.Errorf("ReadPassword(%q): the error repeats the input: %v", in, err)
		}
	}
}

// TestSecretsNeverPrinted: the password appears in no fmt verb, no slog
// handler, no JSON of the password, the driver or anything holding them.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "Hunter2-Secret"
	pw, err := NewPassword(secret)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := ParseBMC("ipmi://admin@10.0.0.5")
	d, err := New(spec, pw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ipmi := d.(*IPMI)
	holder := struct {
		Name string
		PW   Password
		D    Driver
		I    *IPMI
		V    IPMI
		p    Password
	}{"x", pw, d, ipmi, *ipmi, pw}
	var out []string
	for _, v := range []any{pw, &pw, d, ipmi, *ipmi, holder, &holder, []any{pw, d}, map[string]any{"pw": pw}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
			out = append(out, fmt.Sprintf(verb, v))
		}
		j, _ := json.Marshal(v)
		out = append(out, string(j))
		for _, h := range []func(*bytes.Buffer) slog.Handler{
			func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
			func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		} {
			var b bytes.Buffer
			slog.New(h(&b)).Info("m", "v", v, slog.Any("any", v))
			out = append(out, b.String())
		}
	}
	out = append(out, d.String(), spec.String(), ipmi.BMC().String())
	hexSecret := fmt.Sprintf("%x", secret)
	for _, s := range out {
		if strings.Contains(s, secret) || strings.Contains(strings.ToLower(s), hexSecret) {
			t.Fatalf("the password is printed: %s", s)
		}
	}
	if !strings.Contains(fmt.Sprint(holder), "[redacted]") || d.String() != "ipmi://admin@10.0.0.5:623" {
		t.Errorf("unexpected renderings: %v / %s", holder, d)
	}
	if pw.Reveal() != secret {
		t.Error("Reveal lost the password")
	}
}

func TestNewDriver(t *testing.T) {
	none, _ := ParseBMC("none")
	d, err := New(none, Password{}, Options{})
	if err != nil || d.Kind() != "none" || d.String() != "none" {
		t.Fatalf("New(none) = %v, %v", d, err)
	}
	if _, err := d.Status(t.Context()); !errors.Is(err, ErrNoBMC) {
		t.Errorf("none Status: %v", err)
	}
	if _, err := Reboot(t.Context(), d, BootUEFI); !errors.Is(err, ErrNoBMC) {
		t.Errorf("none Reboot: %v", err)
	}
	for _, f := range []func() error{
		func() error { return d.On(t.Context()) }, func() error { return d.Off(t.Context()) },
		func() error { return d.Cycle(t.Context()) }, func() error { return d.BootFromNetwork(t.Context(), BootLegacy) },
	} {
		if err := f(); !errors.Is(err, ErrNoBMC) {
			t.Errorf("none: %v", err)
		}
	}
	ipmi, _ := ParseBMC("ipmi://admin@h")
	if _, err := New(ipmi, Password{}, Options{}); !errors.Is(err, ErrBadPassword) {
		t.Errorf("ipmi without a password: %v", err)
	}
	if _, err := New(BMC{Driver: "ipmi", User: "", Host: "h", Port: 623}, mustPassword(t, "x"), Options{}); !errors.Is(err, ErrBadSpec) {
		t.Errorf("ipmi without a user: %v", err)
	}
	if _, err := New(BMC{Driver: "x"}, Password{}, Options{}); !errors.Is(err, ErrBadSpec) {
		t.Errorf("unknown driver: %v", err)
	}
}

// FuzzParseBMC: any input gives a BMC or an ErrBadSpec, never a panic; an
// accepted one round-trips through String; no error repeats the input.
func FuzzParseBMC(f *testing.F) {
	for _, s := range []string{
		"none", "ipmi://admin@10.0.0.5", "ipmi://admin@10.0.0.5:623", "ipmi://a%40b@[fe80::1]:6230",
		"ipmi://admin:pw@h", "ipmi://@h", "ipmi://u@h:", "ipmi://u@[::1", "ipmi://u@h/x", "IPMI://U@H.EXAMPLE.",
		"redfish://u@h", "ipmi://u@h:99999", "ipmi://u%zz@h", "ipmi://u@[10.0.0.1]", "ipmi://u@" + strings.Repeat("a", 300),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBMC(s)
		if err != nil {
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("error without ErrBadSpec: %v", err)
			}
			if len(s) >= 12 && strings.Contains(err.Error(), s) {
				t.Fatalf("the error repeats the input: %v", err)
			}
			return
		}
		back, err := ParseBMC(b.String())
		if err != nil || back != b {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, b, b.String(), back, err)
		}
		if !b.IsNone() && (b.User == "" || b.Host == "" || b.Port < 1 || b.Port > 65535) {
			t.Fatalf("accepted an incomplete BMC %+v", b)
		}
	})
}

func mustPassword(t testing.TB, s string) Password {
	t.Helper()
	p, err := NewPassword(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
