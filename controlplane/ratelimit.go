package controlplane

import (
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Network boot answers anyone on the provisioning network without
// authentication, so its requests are rate-limited per source address: a
// token bucket per address (IPv6: per /64), RatePerMinute on average with
// bursts of Burst. QEMU's user-mode network (scripts/pxe-check.sh) sends
// every machine from 127.0.0.1: the defaults leave room for several
// machines booting at once from one address.

// Defaults of the network boot rate limit.
const (
	DefaultBootRatePerMinute = 120
	DefaultBootBurst         = 60
	// maxSources bounds the addresses remembered; beyond, idle ones are
	// forgotten, and a new address waits for room.
	maxSources = 1 << 16
)

type rateLimiter struct {
	mu      sync.Mutex
	rate    float64 // tokens a second
	burst   float64
	trusted []netip.Prefix
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// newRateLimiter limits to perMinute requests a minute per source, bursts
// of burst (defaults for 0; perMinute < 0: no limit), trusting the
// X-Forwarded-For of the proxies in trusted.
func newRateLimiter(perMinute, burst int, trusted []netip.Prefix) *rateLimiter {
	if perMinute == 0 {
		perMinute = DefaultBootRatePerMinute
	}
	if burst <= 0 {
		burst = DefaultBootBurst
	}
	l := &rateLimiter{rate: float64(perMinute) / 60, burst: float64(burst), trusted: trusted, buckets: map[netip.Addr]*bucket{}}
	if perMinute < 0 {
		l.rate = -1
	}
	return l
}

// allow takes a token of source's bucket at now; when there is none, it
// says how long until there is.
func (l *rateLimiter) allow(source netip.Addr, now time.Time) (bool, time.Duration) {
	if l.rate < 0 {
		return true, 0
	}
	source = source.Unmap()
	if source.Is6() {
		if p, err := source.Prefix(64); err == nil {
			source = p.Addr()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[source]
	if b == nil {
		if len(l.buckets) >= maxSources {
			l.prune(now)
			if len(l.buckets) >= maxSources {
				return false, time.Second
			}
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[source] = b
	}
	if dt := now.Sub(b.at).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
	}
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// prune forgets the sources whose bucket has refilled.
func (l *rateLimiter) prune(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
}

// ClientIP is a request's source address: its connection's peer
// (remoteAddr, "host:port"), unless that peer is a trusted proxy: then
// the right-most X-Forwarded-For address (xff: the header's values in
// order) that is not itself a trusted proxy, each proxy having appended
// the address it received the request from. What a client wrote to the
// left of that is never believed. ok is false when remoteAddr is not an
// address (then the caller limits the request as one unknown source).
func ClientIP(remoteAddr string, xff []string, trusted []netip.Prefix) (netip.Addr, bool) {
	peer, ok := parseHostAddr(remoteAddr)
	if !ok {
		return netip.Addr{}, false
	}
	if !inPrefixes(peer, trusted) {
		return peer, true
	}
	src := peer
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, ok := parseHostAddr(strings.TrimSpace(parts[j]))
			if !ok {
				return src, true // garbage: the nearest hop we trust said so
			}
			src = a
			if !inPrefixes(a, trusted) {
				return a, true
			}
		}
	}
	return src, true
}

// parseHostAddr parses "1.2.3.4", "1.2.3.4:80", "::1", "[::1]:80".
func parseHostAddr(s string) (netip.Addr, bool) {
	if len(s) > 64 {
		return netip.Addr{}, false
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxies parses a comma-separated list of addresses and
// CIDR prefixes (--boot-trusted-proxy).
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
