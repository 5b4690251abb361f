package httprange

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-99/100", 0, 99, 100, true},
		{" bytes 5-5/*", 5, 5, -1, true},
		{"bytes 10-9/100", 0, 0, 0, false},
		{"bytes 0-100/100", 0, 0, 0, false},
		{"bytes -1-5/10", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes 0-1", 0, 0, 0, false},
		{"bytes 0/2", 0, 0, 0, false},
		{"bytes 0-1/x", 0, 0, 0, false},
	} {
		s, e, tot, err := Parse(c.in)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBad)) {
			t.Errorf("Parse(%q): err %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if c.ok && (s != c.start || e != c.end || tot != c.total) {
			t.Errorf("Parse(%q) = %d, %d, %d; want %d, %d, %d", c.in, s, e, tot, c.start, c.end, c.total)
		}
	}
}

// FuzzParse: any header text gives a range within its total, or ErrBad;
// never a panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-5/*", "bytes 9223372036854775806-9223372036854775806/9223372036854775807", "bytes 1-0/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s, e, tot, err := Parse(v)
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("error %v is not ErrBad", err)
			}
			return
		}
		if s < 0 || e < s || (tot != -1 && tot <= e) {
			t.Fatalf("Parse(%q) = %d, %d, %d", v, s, e, tot)
		}
	})
}
