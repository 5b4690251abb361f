package controlplane_test

import (
	"strings"
	"testing"

	"github.com/byoi/byoi/controlplane"
)

// FuzzSignedURLs: the URLs a signature may cover, from an untrusted Host
// header and request URI: never a panic; the first is SignedURL's; a
// second one only when the host had a port, and it is the first without
// that port and nothing else.
func FuzzSignedURLs(f *testing.F) {
	f.Add("127.0.0.1:8443", "/1.0/auth/time", "")
	f.Add("[::1]:80", "/1.0/x?a=b", "")
	f.Add("h", "/x", "https://api.example.com:8443/byoi")
	f.Add("a@b:1", "/x", "")
	f.Add("[fe80::1%25eth0]:8080", "/y", "")
	f.Add("h:", "http://h:99/z", "")
	f.Fuzz(func(t *testing.T, host, uri, public string) {
		got := controlplane.SignedURLs(public, len(host)%2 == 0, host, uri)
		if len(got) == 0 || len(got) > 2 || got[0] != controlplane.SignedURL(public, len(host)%2 == 0, host, uri) {
			t.Fatalf("SignedURLs = %q", got)
		}
		if len(got) == 2 {
			a, b := got[0], got[1]
			if len(b) >= len(a) || !strings.Contains(a, ":") {
				t.Fatalf("second %q is not the first %q without a port", b, a)
			}
			// b is a with one ":digits..." removed from the authority.
			i := 0
			for i < len(b) && a[i] == b[i] {
				i++
			}
			if a[i] != ':' || a[i+len(a)-len(b):] != b[i:] {
				t.Fatalf("%q and %q differ by more than the port", a, b)
			}
		}
	})
}

// FuzzFacts: the facts file parser never panics, and what it accepts
// gives every server facts.
func FuzzFacts(f *testing.F) {
	f.Add(`{"defaults":{"datacenter":"gra3","linkSpeed":1000},"servers":{"ns1":{"ip":"192.0.2.10","ips":["198.51.100.0/29"]}}}`)
	f.Add(`{"servers":{"ns1":{"network":"192.0.2.0/24","gateway":"192.0.2.1"}}}`)
	f.Add(`{"defaults":{"ip":"::1"}}`)
	f.Fuzz(func(t *testing.T, doc string) {
		ff, err := controlplane.ParseFacts([]byte(doc))
		if err != nil {
			return
		}
		for name := range ff.Servers {
			ff.For(name)
		}
		ff.For("none")
	})
}
