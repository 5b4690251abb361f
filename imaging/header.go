package imaging

import "log/slog"

// Header is one HTTP header sent with the image download. Its Value is a
// secret (tokens, pre-signed credentials): it is never logged, printed or
// put in an error.
type Header struct {
	Name  string
	Value string
}

// String shows the header name only.
func (h Header) String() string { return h.Name + ": <redacted>" }

// LogValue keeps the value out of structured logs.
func (h Header) LogValue() slog.Value { return slog.StringValue(h.String()) }
