// Command byoi-load plays N agents and M customers against one or more
// byoi-api instances for a bounded time and checks at the end that every
// event an instance acknowledged is in the database. Its logic, flags and
// report are package bench/load's; bench/bench-api.sh runs it.
//
//	byoi-load --db byoi.db --url http://127.0.0.1:8080 --agents 1000 --duration 60s --pid api=$(pidof byoi-api)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/byoi/byoi/bench/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := load.Run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "byoi-load:", err)
		os.Exit(1)
	}
}
