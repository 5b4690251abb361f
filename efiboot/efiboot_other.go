//go:build !linux

package efiboot

// makeMutable is a no-op outside Linux: only efivarfs has immutable
// variables, and it exists only on Linux.
func makeMutable(string) error { return nil }

// isEfivarfs is false outside Linux.
func isEfivarfs(string) bool { return false }
