package sqlitestore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/controlplane/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "byoi.db"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestMigrationsIdempotent: opening an existing database applies nothing
// twice, and two stores may share a file.
func TestMigrationsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "byoi.db")
	ctx := context.Background()
	a, err := sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := b.SchemaVersion(ctx)
	if err != nil || v != 1 {
		t.Fatalf("version %d %v", v, err)
	}
}
