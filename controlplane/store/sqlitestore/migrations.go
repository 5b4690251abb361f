package sqlitestore

// migrations is the schema, one numbered step each, applied in order at
// Open in one transaction (BEGIN IMMEDIATE: two instances opening the same
// file at once apply each step once). A step is never edited once
// released; a change is a new step.
//
// Times are Unix milliseconds (UTC). Secrets are stored sealed or hashed
// by the control plane (package store).
var migrations = []string{
	1: `
CREATE TABLE customers (
	id INTEGER PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	created_at INTEGER NOT NULL
);
CREATE TABLE credentials (
	id INTEGER PRIMARY KEY,
	customer_id INTEGER NOT NULL REFERENCES customers(id),
	app_key TEXT NOT NULL UNIQUE,
	app_secret_sealed BLOB NOT NULL,
	consumer_key_hash BLOB NOT NULL UNIQUE,
	created_at INTEGER NOT NULL
);
CREATE TABLE access_tokens (
	id INTEGER PRIMARY KEY,
	customer_id INTEGER NOT NULL REFERENCES customers(id),
	token_hash BLOB NOT NULL UNIQUE,
	created_at INTEGER NOT NULL
);
CREATE TABLE servers (
	id INTEGER PRIMARY KEY,
	customer_id INTEGER NOT NULL REFERENCES customers(id),
	name TEXT NOT NULL UNIQUE,
	mac TEXT NOT NULL DEFAULT '',
	agent_token_hash BLOB UNIQUE,
	boot_id INTEGER NOT NULL,
	efi_bootloader_path TEXT NOT NULL DEFAULT '',
	inventory BLOB,
	inventory_at INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL
);
CREATE INDEX servers_customer ON servers(customer_id, name);
CREATE TABLE deployments (
	id INTEGER PRIMARY KEY,
	server_id INTEGER NOT NULL REFERENCES servers(id),
	task_id INTEGER NOT NULL DEFAULT 0,
	shape INTEGER NOT NULL,
	job_sealed BLOB NOT NULL,
	checksum TEXT NOT NULL DEFAULT '',
	status TEXT NOT NULL,
	code TEXT NOT NULL DEFAULT '',
	message TEXT NOT NULL,
	attempt INTEGER NOT NULL DEFAULT 0,
	last_seq INTEGER NOT NULL DEFAULT 0,
	step TEXT NOT NULL DEFAULT '',
	bytes_done INTEGER NOT NULL DEFAULT 0,
	bytes_total INTEGER NOT NULL DEFAULT 0,
	event_time INTEGER NOT NULL DEFAULT 0,
	history_n INTEGER NOT NULL DEFAULT 0,
	cleared INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	ended_at INTEGER NOT NULL DEFAULT 0,
	last_seen INTEGER NOT NULL DEFAULT 0
);
-- The rule "one running deployment per server" is the database's.
CREATE UNIQUE INDEX deployments_one_running ON deployments(server_id) WHERE status = 'doing';
CREATE INDEX deployments_server ON deployments(server_id, id);
CREATE INDEX deployments_running ON deployments(attempt, last_seen, created_at) WHERE status = 'doing';
CREATE TABLE tasks (
	id INTEGER PRIMARY KEY,
	server_id INTEGER NOT NULL REFERENCES servers(id),
	deployment_id INTEGER NOT NULL,
	function TEXT NOT NULL,
	status TEXT NOT NULL,
	start_date INTEGER NOT NULL,
	last_update INTEGER NOT NULL,
	done_date INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_server ON tasks(server_id, id);
CREATE TABLE events (
	deployment_id INTEGER NOT NULL,
	n INTEGER NOT NULL,
	attempt INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	source TEXT NOT NULL,
	time INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	status TEXT NOT NULL,
	step TEXT NOT NULL,
	kind TEXT NOT NULL,
	code TEXT NOT NULL,
	message TEXT NOT NULL,
	bytes_done INTEGER NOT NULL,
	bytes_total INTEGER NOT NULL,
	rate REAL NOT NULL DEFAULT 0,
	PRIMARY KEY (deployment_id, n)
) WITHOUT ROWID;
-- Idempotency of agent events: (deployment, attempt, seq) once.
CREATE UNIQUE INDEX events_seq ON events(deployment_id, attempt, seq) WHERE seq > 0;
`,
}
