package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// testNetboot: MAC addresses identify one server each; boot info is one
// record per server, replaced by the next.
func testNetboot(t *testing.T, s store.Store) {
	a := server(t, s, "acme", "ns1")
	b := server(t, s, "acme", "ns2")
	if _, err := s.ServerByMAC(ctx, "52:54:00:00:00:01"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown MAC: %v", err)
	}
	if got := must(s.ServerMACs(ctx, a.ID)); len(got) != 0 {
		t.Fatalf("a new server's MACs: %q", got)
	}
	ok(t, s.SetServerMACs(ctx, a.ID, []string{"52:54:00:00:00:02", "52:54:00:00:00:01"}))
	if got := must(s.ServerMACs(ctx, a.ID)); !slices.Equal(got, []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}) {
		t.Fatalf("MACs %q", got)
	}
	for _, m := range []string{"52:54:00:00:00:01", "52:54:00:00:00:02"} {
		if got := must(s.ServerByMAC(ctx, m)); got.ID != a.ID || got.Name != "ns1" {
			t.Fatalf("ServerByMAC(%s) = %+v", m, got)
		}
	}
	// A MAC of another server is refused, and nothing changes.
	if err := s.SetServerMACs(ctx, b.ID, []string{"52:54:00:00:00:03", "52:54:00:00:00:02"}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("a MAC of another server: %v", err)
	}
	if got := must(s.ServerMACs(ctx, b.ID)); len(got) != 0 {
		t.Fatalf("a refused change left %q", got)
	}
	if _, err := s.ServerByMAC(ctx, "52:54:00:00:00:03"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused change left a MAC: %v", err)
	}
	// Replacing: the old MACs go, and another server may take them.
	ok(t, s.SetServerMACs(ctx, a.ID, []string{"52:54:00:00:00:01"}))
	ok(t, s.SetServerMACs(ctx, b.ID, []string{"52:54:00:00:00:02"}))
	if got := must(s.ServerByMAC(ctx, "52:54:00:00:00:02")); got.ID != b.ID {
		t.Fatalf("moved MAC: %+v", got)
	}
	ok(t, s.SetServerMACs(ctx, b.ID, nil))
	if _, err := s.ServerByMAC(ctx, "52:54:00:00:00:02"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cleared MAC: %v", err)
	}
	if err := s.SetServerMACs(ctx, 999999, []string{"52:54:00:00:00:09"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("MACs of no server: %v", err)
	}

	// Boot info.
	if _, err := s.BootInfo(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no boot info yet: %v", err)
	}
	d, _ := create(t, s, a)
	bi := store.BootInfo{ServerID: a.ID, DeploymentID: d.ID, DiskKey: "gpt:00112233445566778899aabbccddeeff", EFIEntry: `Boot000B \EFI\debian\grubx64.efi`, UpdatedAt: t0}
	ok(t, s.SetBootInfo(ctx, bi))
	if got := must(s.BootInfo(ctx, a.ID)); got != bi {
		t.Fatalf("boot info %+v, want %+v", got, bi)
	}
	bi2 := store.BootInfo{ServerID: a.ID, DeploymentID: d.ID + 1, DiskKey: "mbr:1a2b3c4d", UpdatedAt: t0.Add(time.Minute)}
	ok(t, s.SetBootInfo(ctx, bi2))
	if got := must(s.BootInfo(ctx, a.ID)); got != bi2 {
		t.Fatalf("replaced boot info %+v, want %+v", got, bi2)
	}
	if _, err := s.BootInfo(ctx, b.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another server's boot info: %v", err)
	}
	if err := s.SetBootInfo(ctx, store.BootInfo{ServerID: 999999, DeploymentID: 1, UpdatedAt: t0}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("boot info of no server: %v", err)
	}
}
