package open_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/controlplane/store/open"
)

func TestStorePostgresNeedsKeyFile(t *testing.T) {
	st, _, err := open.Store(context.Background(), "postgres://byoi@127.0.0.1:1/byoi", "")
	if err == nil {
		st.Close()
		t.Fatal("a PostgreSQL database without --key-file was opened")
	}
	if !strings.Contains(err.Error(), "--key-file") {
		t.Fatalf("error does not name --key-file: %v", err)
	}
}

func TestStoreSQLiteMakesKeyBeside(t *testing.T) {
	db := filepath.Join(t.TempDir(), "byoi.db")
	st, keys, err := open.Store(context.Background(), db, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if keys == nil {
		t.Fatal("no keyring")
	}
	if _, err := os.Stat(db + ".key"); err != nil {
		t.Fatalf("key file not made beside the database: %v", err)
	}
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("database not made: %v", err)
	}
}
