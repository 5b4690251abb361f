// Package pgtest gives tests a PostgreSQL database of their own: an empty
// schema in the database named by BYOI_TEST_PG_DSN (scripts/test.sh starts
// a throw-away cluster with scripts/pg-throwaway.sh and sets it). Without
// it a test skips, or fails in CI (testutil.Unavailable).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
	"github.com/jackc/pgx/v5"
)

// EnvDSN is the variable naming the test database.
const EnvDSN = "BYOI_TEST_PG_DSN"

// DSN returns a DSN whose connections see only a new empty schema (its
// search_path), dropped when the test ends.
func DSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv(EnvDSN)
	if base == "" {
		testutil.Unavailable(t, "needs PostgreSQL: set %s (scripts/pg-throwaway.sh start prints one)", EnvDSN)
		return ""
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		testutil.Unavailable(t, "PostgreSQL at %s: %v", EnvDSN, err)
		return ""
	}
	defer conn.Close(ctx)
	var b [6]byte
	rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Log(err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Log(err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
