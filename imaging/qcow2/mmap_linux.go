package qcow2

import "golang.org/x/sys/unix"

// mapNoReserve: anonymous staging memory costs only what is written.
const mapNoReserve = unix.MAP_NORESERVE
