//go:build !linux

package imaging

// mapNoReserve is Linux's; elsewhere the mapping is reserved up front.
const mapNoReserve = 0
