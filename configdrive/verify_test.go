package configdrive

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestVerifyReadsBack(t *testing.T) {
	c := Content{UUID: DeriveUUID("verify"), Hostname: "web1", UserData: []byte("#!/bin/sh\n")}
	for _, f := range []Format{ISO9660, VFAT} {
		img, err := Build(context.Background(), c, f)
		if err != nil {
			t.Fatal(err)
		}
		r := bytes.NewReader(img)
		if err := Verify(r, int64(len(img)), f, c.UUID); err != nil {
			t.Errorf("%v: %v", f, err)
		}
		if err := Verify(r, int64(len(img)), f, DeriveUUID("other")); err == nil || !strings.Contains(err.Error(), "uuid") {
			t.Errorf("%v: wrong uuid accepted: %v", f, err)
		}
		// A damaged drive (the label's sector zeroed) is refused.
		bad := bytes.Clone(img)
		if f == ISO9660 {
			clear(bad[0x8000:0x8800])
		} else {
			clear(bad[:512])
		}
		if err := Verify(bytes.NewReader(bad), int64(len(bad)), f, c.UUID); err == nil {
			t.Errorf("%v: damaged drive accepted", f)
		}
	}
}
