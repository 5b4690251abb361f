// Command byoi-api is the byoi control plane: the customer API (OVH's
// paths, go-ovh authentication) and the agent API, on an embedded SQLite
// database, plus the operator's admin commands.
//
//	byoi-api serve --db byoi.db --listen 127.0.0.1:8080
//	byoi-api customer add acme
//	byoi-api credential add --customer acme       → applicationKey, applicationSecret, consumerKey
//	byoi-api token add --customer acme            → accessToken
//	byoi-api server add ns1.example --customer acme [--mac 52:54:00:12:34:56]... → agentToken
//	byoi-api server macs ns1.example --mac 52:54:00:12:34:56   → the MACs it network-boots with
//	byoi-api server token ns1.example             → a fresh agentToken
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
