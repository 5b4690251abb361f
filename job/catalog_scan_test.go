package job

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestNoMessageTextOutsideCatalog: every customer-facing text lives in the
// catalog. It parses every non-test Go file of the product (not job/, nor
// the test tools under scripts/) and
// fails when a string literal holds a piece of a catalog message (the text
// between its verbs, at least 24 characters long, so that common phrases
// such as "bytes, more than the" do not count): such a copy would drift
// from the catalog, as "Bad checkSumType..." once did in two orders.
func TestNoMessageTextOutsideCatalog(t *testing.T) {
	verb := regexp.MustCompile(`%(\[\d+\])?[-+# 0]*\d*(\.\d+)?[a-zA-Z]`)
	var pieces []string
	owner := map[string]Code{}
	for _, c := range Codes() {
		for _, p := range verb.Split(strings.ReplaceAll(Format(c), "%%", "%"), -1) {
			p = strings.TrimSpace(p)
			if len(p) >= 24 {
				pieces = append(pieces, p)
				owner[p] = c
			}
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "job", "testdata", ".git", "node_modules", "scripts", "harness":
				// scripts/ and internal/harness hold test tools: a
				// checker may expect a message word for word.
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, src, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			for _, p := range pieces {
				if strings.Contains(s, p) {
					rel, _ := filepath.Rel(root, path)
					t.Errorf("%s: literal %.60q copies catalog text of %s (%q): use job.Text", rel, s, owner[p], p)
					break
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 20 {
		t.Fatalf("scanned only %d files", files)
	}
}
