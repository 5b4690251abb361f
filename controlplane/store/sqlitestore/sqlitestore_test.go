package sqlitestore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
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

// TestInstances: two stores on one file (two processes would do the
// same; byoi-api on SQLite is meant to run alone, but nothing breaks).
func TestInstances(t *testing.T) {
	storetest.RunInstances(t, func(t *testing.T) (store.Store, store.Store) {
		path := filepath.Join(t.TempDir(), "byoi.db")
		a, err := sqlitestore.Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sqlitestore.Open(context.Background(), path)
		if err != nil {
			a.Close()
			t.Fatal(err)
		}
		return a, b
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
	if err != nil || v != migrations.Latest() {
		t.Fatalf("version %d %v", v, err)
	}
}
