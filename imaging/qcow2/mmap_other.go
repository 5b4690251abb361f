//go:build !linux

package qcow2

// mapNoReserve is Linux's; elsewhere the mapping is reserved up front.
const mapNoReserve = 0
