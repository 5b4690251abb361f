package controlplane

import (
	"strings"
)

// Signed URLs with or without the listener's port (issue 24).
//
// OVH's Node.js client (npm ovh 2.0.3) signs "https://" + host + path: the
// host without the port it connects to, whatever that port is (it was
// written for OVH's API on 443). go-ovh and python-ovh sign the URL they
// were given, port included. So on any port but 443 (or 80), the same
// request is signed over two spellings of one URL. byoi-api accepts both:
// the signature binds the request to the secret, the consumer key, the
// method, the path and query, the body and the timestamp, and none of that
// changes. What the port would add is which listener the client meant; but
// the request reached this listener, and every listener of byoi-api on
// that host serves the same API over the same database, so a signature
// over the port-less URL cannot make a request mean anything else. A host
// running two separate byoi-api services on two ports, with one
// application key valid on both (the same secret in two databases), would
// let a request signed for one be replayed on the other within the time
// window: give each service its own credentials (`credential add` creates
// new keys per database, so this takes copying one by hand).

// SignedURLs are the URLs a signature over a request to requestURI on host
// may cover: SignedURL's, then the same without the port when it has one
// (the Node.js client's spelling).
func SignedURLs(publicURL string, tls bool, host, requestURI string) []string {
	u := SignedURL(publicURL, tls, host, requestURI)
	if alt, ok := dropPort(u); ok {
		return []string{u, alt}
	}
	return []string{u}
}

// dropPort returns u without the port of its authority, and whether it
// had one.
func dropPort(u string) (string, bool) {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "", false
	}
	authority, path := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, path = rest[:i], rest[i:]
	}
	if strings.Contains(authority, "@") {
		return "", false // userinfo: not a URL a client signs
	}
	// The port is the digits after the last colon, which must follow the
	// host: a name or IPv4 address (no other colon), or a bracketed IPv6
	// address. The host is kept exactly as spelled.
	i := strings.LastIndexByte(authority, ':')
	if i <= 0 || i == len(authority)-1 || strings.Trim(authority[i+1:], "0123456789") != "" {
		return "", false
	}
	host := authority[:i]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") || !strings.HasPrefix(host, "[") && strings.Contains(host, ":") || host == "[]" {
		return "", false
	}
	return scheme + "://" + host + path, true
}

// signatureMatches compares sig with the signature over each URL the
// request may have been signed over, in constant time and without
// stopping at the first match.
func signatureMatches(secret, consumer, method string, urls []string, body []byte, ts int64, sig string) bool {
	match := false
	for _, u := range urls {
		if equal([]byte(Sign(secret, consumer, method, u, body, ts)), []byte(sig)) {
			match = true
		}
	}
	return match
}
