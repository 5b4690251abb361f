package job

import (
	"log/slog"
	"strconv"
	"strings"
)

// RedactURL returns raw without what may carry secrets: the userinfo, the
// query string and the fragment (pre-signed URLs carry their signature in
// the query), e.g. https://host/path/img.qcow2?<redacted>. It works on any
// string, parseable or not, and never fails. It splits the way url.Parse
// does (scheme, "//" authority up to the first '/', userinfo up to the
// authority's last '@'), and also drops a userinfo-looking prefix from an
// opaque URL ("https:user:pass@host").
func RedactURL(raw string) string {
	base, tail := raw, ""
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		base = raw[:i]
		if raw[i] == '?' {
			tail = "?<redacted>"
		} else {
			tail = "#<redacted>"
		}
	}
	start := schemeLen(base)
	if strings.HasPrefix(base[start:], "//") {
		start += 2
	}
	end := len(base)
	if i := strings.IndexByte(base[start:], '/'); i >= 0 {
		end = start + i
	}
	if at := strings.LastIndexByte(base[start:end], '@'); at >= 0 {
		base = base[:start] + base[start+at+1:]
	}
	return base + tail
}

// schemeLen is the length of "scheme:" at the start of s (RFC 3986
// scheme, as url.Parse reads it), or 0.
func schemeLen(s string) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9', c == '+', c == '-', c == '.':
			if i == 0 {
				return 0
			}
		case c == ':':
			if i == 0 {
				return 0
			}
			return i + 1
		default:
			return 0
		}
	}
	return 0
}

// LogValue is a safe summary: the URL without user info and query, type,
// checksum type, header names only, disk group, and which ConfigDrive fields
// are present (the hostname itself is shown; user data and metadata values
// never are).
func (j *Job) LogValue() slog.Value {
	if j == nil {
		return slog.StringValue("<nil job>")
	}
	attrs := []slog.Attr{
		slog.String("url", RedactURL(j.ImageURL)),
		slog.String("type", j.ImageType),
	}
	if j.ChecksumType != "" {
		attrs = append(attrs, slog.String("checksumType", j.ChecksumType))
	}
	if len(j.Headers) > 0 {
		names := make([]string, len(j.Headers))
		for i, h := range j.Headers {
			names[i] = h.Name
		}
		attrs = append(attrs, slog.String("headers", strings.Join(names, ",")))
	}
	attrs = append(attrs, slog.Int("diskGroupId", j.DiskGroupID))
	if j.EFIBootloaderPath != "" {
		attrs = append(attrs, slog.String("efiBootloaderPath", j.EFIBootloaderPath))
	}
	if j.ImageChecks != "" {
		attrs = append(attrs, slog.String("imageChecks", j.ImageChecks))
	}
	if j.NetworkData != "" {
		attrs = append(attrs, slog.String("networkData", j.NetworkData))
	}
	if cd := j.ConfigDrive; cd != nil {
		attrs = append(attrs, slog.Attr{Key: "configdrive", Value: cd.LogValue()})
	}
	return slog.GroupValue(attrs...)
}

// LogValue shows the hostname and, for the other fields, only whether they
// are present and how big they are.
func (c *ConfigDrive) LogValue() slog.Value {
	if c == nil {
		return slog.StringValue("<none>")
	}
	var attrs []slog.Attr
	if c.Hostname != "" {
		attrs = append(attrs, slog.String("hostname", c.Hostname))
	}
	if c.SSHKey != "" {
		attrs = append(attrs, slog.Int("sshKeys", strings.Count(strings.TrimSpace(c.SSHKey), "\n")+1))
	}
	if len(c.UserData) > 0 {
		attrs = append(attrs, slog.Int("userDataBytes", len(c.UserData)))
	}
	if len(c.Metadata) > 0 {
		attrs = append(attrs, slog.Int("metadataKeys", len(c.Metadata)))
	}
	if len(attrs) == 0 {
		return slog.StringValue("enabled")
	}
	return slog.GroupValue(attrs...)
}

// String and GoString have value receivers so that printing a Job or
// ConfigDrive value (not only a pointer) with %v, %+v or %#v shows the safe
// summary rather than the header values and user data.

// String is the LogValue summary as text.
func (j Job) String() string { return "Job{" + formatValue(j.LogValue()) + "}" }

// GoString is String: %#v must not dump secrets either.
func (j Job) GoString() string { return j.String() }

// String is the LogValue summary as text.
func (c ConfigDrive) String() string { return "ConfigDrive{" + formatValue(c.LogValue()) + "}" }

// GoString is String: %#v must not dump secrets either.
func (c ConfigDrive) GoString() string { return c.String() }

func formatValue(v slog.Value) string {
	if v.Kind() != slog.KindGroup {
		return v.String()
	}
	var b strings.Builder
	for i, a := range v.Group() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key)
		b.WriteByte('=')
		if a.Value.Kind() == slog.KindGroup {
			b.WriteString("{" + formatValue(a.Value) + "}")
		} else {
			b.WriteString(strconv.Quote(a.Value.String()))
		}
	}
	return b.String()
}
