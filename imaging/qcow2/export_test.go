package qcow2

// ForceStageMemory makes memory stages "memfd" or "anon" ("" chooses) until
// the returned function is called.
func ForceStageMemory(kind string) (restore func()) {
	old := stageMemForce
	stageMemForce = kind
	return func() { stageMemForce = old }
}
