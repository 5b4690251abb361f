package controlplane

import (
	"sort"
	"strings"
)

// Test hooks of the schema documents (issue 24).

// SchemaBaseType and SchemaPrimitive expose the schema's type rules.
func SchemaBaseType(t string) string { return baseType(t) }
func SchemaPrimitive(t string) bool  { return primitives[t] }

// CustomerOperations lists "METHOD path" of every customer API route
// under /1.0 (the schema routes and the catch-all excepted).
func CustomerOperations(s *Server) []string {
	var out []string
	for _, rt := range s.table {
		p, ok := strings.CutPrefix(rt.pattern, "/1.0/")
		if !ok {
			continue
		}
		for m := range rt.methods {
			out = append(out, m+" /"+p)
		}
	}
	sort.Strings(out)
	return out
}
