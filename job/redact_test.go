package job

import (
	"net/url"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://host/path/img.qcow2?X-Amz-Signature=abc": "https://host/path/img.qcow2?<redacted>",
		"https://user:pw@host:8443/a/b.raw":               "https://host:8443/a/b.raw",
		"http://u@h/p#frag":                               "http://h/p#<redacted>",
		"https://h/p@x?q":                                 "https://h/p@x?<redacted>",
		"https://a@b@host/":                               "https://host/",
		"https:user:pw@host/p":                            "https:host/p",
		"//user:pw@host/p?q":                              "//host/p?<redacted>",
		"not a url":                                       "not a url",
		"":                                                "",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzRedactURL(f *testing.F) {
	for _, s := range []string{
		"https://user:pass@host/p?sig=1#f", "http://h/p", "//u@h", "https:u:p@h/x", "http://[::1]:80/?a",
		"https://h/p#a?b", "", "?", "@", "a:b@c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := RedactURL(in)
		rest, _ := strings.CutSuffix(out, "?<redacted>")
		rest, _ = strings.CutSuffix(rest, "#<redacted>")
		if strings.ContainsAny(rest, "?#") {
			t.Fatalf("RedactURL(%q) = %q keeps a query or fragment", in, out)
		}
		u, err := url.Parse(in)
		if err != nil {
			return
		}
		if o, err := url.Parse(out); err == nil && o.User != nil {
			t.Fatalf("RedactURL(%q) = %q keeps userinfo %q", in, out, o.User)
		}
		visible := u.Scheme + "://" + u.Host + u.EscapedPath() + u.Path + u.Opaque
		var secrets []string
		if u.RawQuery != "" {
			secrets = append(secrets, u.RawQuery)
		}
		if u.Fragment != "" {
			secrets = append(secrets, u.Fragment, u.EscapedFragment())
		}
		if u.User != nil {
			secrets = append(secrets, u.User.String())
			if p, ok := u.User.Password(); ok && p != "" {
				secrets = append(secrets, p)
			}
		}
		for _, sec := range secrets {
			if strings.Contains(visible, sec) {
				continue // cannot tell it apart from the part that is kept
			}
			if strings.Contains(rest, sec) {
				t.Fatalf("RedactURL(%q) = %q contains %q", in, out, sec)
			}
		}
	})
}

// BenchmarkFetch512MiB downloads 512 MiB from a local server through a
// Stream, hashing with sha256 as the agent does.
//
//	go test -run '^$' -bench Fetch512MiB -benchtime 1x ./imaging/

// The job's summary names byoi's own options when they are set.
func TestLogValueOptions(t *testing.T) {
	j := Job{ImageURL: "https://example.com/a.qcow2", ImageType: ImageTypeQcow2, DiskGroupID: 1}
	if s := j.String(); strings.Contains(s, "imageChecks") || strings.Contains(s, "networkData") {
		t.Fatalf("options not set, yet named: %s", s)
	}
	j.ImageChecks, j.NetworkData = ImageChecksStrict, "off"
	s := j.String()
	if !strings.Contains(s, `imageChecks="strict"`) || !strings.Contains(s, `networkData="off"`) {
		t.Fatalf("summary %s does not name the options", s)
	}
}
