package pgstore_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/migrations"
	"github.com/byoi/byoi/controlplane/store/pgstore"
	"github.com/byoi/byoi/controlplane/store/pgstore/pgtest"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/controlplane/store/storetest"
	"github.com/jackc/pgx/v5"
)

func open(t *testing.T, dsn string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestConformance runs the same suite as sqlitestore's, each case on a
// new empty schema.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, pgtest.DSN(t)) })
}

// TestInstances: two stores (two pools, two group committers: two
// byoi-api instances) on one database.
func TestInstances(t *testing.T) {
	storetest.RunInstances(t, func(t *testing.T) (store.Store, store.Store) {
		dsn := pgtest.DSN(t)
		return open(t, dsn), open(t, dsn)
	})
}

// TestMigrationsConcurrent: instances starting together apply each step
// once (the advisory lock), and a second start applies nothing.
func TestMigrationsConcurrent(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	stores := make([]*pgstore.Store, 4)
	errs := make([]error, 4)
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = pgstore.Open(context.Background(), dsn)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		defer stores[i].Close()
	}
	v, err := stores[0].SchemaVersion(context.Background())
	if err != nil || v != migrations.Latest() {
		t.Fatalf("version %d %v", v, err)
	}
}

// TestSchemaSame: the two dialects of the migrations give the same tables,
// columns and indexes.
func TestSchemaSame(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	open(t, dsn).Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var pg []string
	rows, err := conn.Query(ctx, `SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = current_schema()
		UNION ALL SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		pg = append(pg, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "byoi.db")
	sq, err := sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	lite, err := sq.SchemaNames(ctx)
	sq.Close()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(pg)
	slices.Sort(lite)
	if !slices.Equal(pg, lite) {
		t.Fatalf("schemas differ:\npostgres %q\nsqlite   %q", pg, lite)
	}
}
