package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIIsThin: cmd/byoi keeps flags, rendering and exit codes; a
// deployment and an inspection are agent.Run and agent.Inspect. The CLI
// must not call the in-use checks, the lock, the device opener, the
// downloader or the qcow2 stager itself (an agent mode would have to copy
// them).
func TestCLIIsThin(t *testing.T) {
	forbidden := map[string]bool{
		"fetch.Open": true, "qcow2.Stage": true, "imaging.WriteRaw": true, "qcow2.Convert": true,
		"blockdev.Open": true, "fetch.OpenRange": true, "ova.Write": true,
	}
	forbiddenMethods := map[string]bool{"InUse": true, "InUseByPath": true, "CheckNotInUse": true, "Lock": true, "Deploy": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		n++
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(node ast.Node) bool {
			call, ok := node.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && forbidden[id.Name+"."+sel.Sel.Name] {
				t.Errorf("%s calls %s.%s: that belongs in agent", f, id.Name, sel.Sel.Name)
			}
			if x, ok := sel.X.(*ast.SelectorExpr); ok && x.Sel.Name == "mu" {
				return true // a sync.Mutex, not a disk lock
			}
			if forbiddenMethods[sel.Sel.Name] {
				t.Errorf("%s calls .%s: that belongs in agent", f, sel.Sel.Name)
			}
			return true
		})
	}
	if n < 5 {
		t.Fatalf("parsed %d files", n)
	}
}
