package sqlstore

import (
	"context"
	"time"

	"github.com/byoi/byoi/controlplane/store"
)

// Fleet-wide figures for the metrics (issue 28, ported from the two stores
// this package replaced): the same numbers on every instance.

func (s *Store) FleetCounts(ctx context.Context, seenSince time.Time) (store.FleetCounts, error) {
	f := store.FleetCounts{Tasks: map[string]int64{}}
	err := s.queryRow(ctx, `SELECT (SELECT count(*) FROM servers),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt = 0),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt > 0),
		(SELECT count(*) FROM deployments WHERE status = 'doing' AND attempt > 0 AND last_seen >= ?)`, Ms(seenSince)).
		Scan(&f.Servers, &f.Waiting, &f.Active, &f.Heartbeating)
	if err != nil {
		return f, err
	}
	rows, err := s.query(ctx, `SELECT status, count(*) FROM tasks GROUP BY status`)
	if err != nil {
		return f, err
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return f, err
		}
		f.Tasks[st] = n
	}
	return f, rows.Err()
}

func (s *Store) DeploymentJob(ctx context.Context, serverID, deploymentID int64) ([]byte, error) {
	var b []byte
	err := s.queryRow(ctx, `SELECT job_sealed FROM deployments WHERE server_id = ? AND id = ?`, serverID, deploymentID).Scan(&b)
	return b, s.notFound(err)
}
