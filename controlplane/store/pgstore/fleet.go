package pgstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/jackc/pgx/v5"
)

// Fleet-wide figures for the metrics (issue 28).

func (s *Store) FleetCounts(ctx context.Context, seenSince time.Time) (store.FleetCounts, error) {
	f := store.FleetCounts{Tasks: map[string]int64{}}
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM servers),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt = 0),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt > 0),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt > 0 AND last_seen >= $1)`, ms(seenSince)).
		Scan(&f.Servers, &f.Waiting, &f.Active, &f.Heartbeating)
	if err != nil {
		return f, err
	}
	rows, err := s.pool.Query(ctx, `SELECT status, count(*) FROM tasks GROUP BY status`)
	if err != nil {
		return f, err
	}
	type row struct {
		Status string
		N      int64
	}
	rs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	for _, r := range rs {
		f.Tasks[r.Status] = r.N
	}
	return f, err
}

func (s *Store) DeploymentJob(ctx context.Context, serverID, deploymentID int64) ([]byte, error) {
	var b []byte
	err := s.pool.QueryRow(ctx, `SELECT job_sealed FROM deployments WHERE server_id = $1 AND id = $2`, serverID, deploymentID).Scan(&b)
	return b, notFound(err)
}
