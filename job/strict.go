package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
)

// isReinstall reports whether the top-level object has an
// "operatingSystem" member, the mark of the reinstall shape. It reads the
// top level only, without keeping the values.
func isReinstall(data []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return false, jsonSyntaxError(err, dec)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return false, invalid("", JobNotObject)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false, jsonSyntaxError(err, dec)
		}
		if tok == "operatingSystem" {
			return true, nil
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return false, jsonSyntaxError(err, dec)
		}
	}
	return false, nil
}

// decodeStrict checks data against v's shape with checkJSON (exact field
// names, no duplicates, JSON kinds, no trailing data) and then decodes it
// with DisallowUnknownFields.
func decodeStrict(data []byte, v any) error {
	if err := checkJSON(data, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// checkJSON accepted the document, so this should not happen. The
		// decoder's message may quote input (a number), so it is not shown.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(te.Field, JobFieldType, te.Field)
		}
		return invalid("", JobShape)
	}
	return nil
}

// checkJSON walks the JSON document in data against the Go type t, matching
// object keys to `json` tags exactly. encoding/json matches field names
// case-insensitively, so DisallowUnknownFields alone would take "checksum"
// for "checkSum" and keep the last of repeated keys; this walk refuses both
// and names the field. The walk follows t, so its depth is bounded by t.
func checkJSON(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return jsonSyntaxError(err, dec)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalid("", JobNotObject)
	}
	if err := checkObject(dec, t, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("", JobTrailingData)
	}
	return nil
}

// checkValue checks one value whose first token is still to be read.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonSyntaxError(err, dec)
	}
	if tok == nil {
		return nil // every field is nullable
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return kindError(path, "a string")
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return kindError(path, "true or false")
		}
	case reflect.Int:
		n, ok := tok.(json.Number)
		if !ok {
			return kindError(path, "an integer")
		}
		if _, err := strconv.ParseInt(string(n), 10, 32); err != nil {
			return kindError(path, "an integer")
		}
	case reflect.Slice:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return kindError(path, "an array")
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return jsonSyntaxError(err, dec)
		}
	case reflect.Struct, reflect.Map:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return kindError(path, "an object")
		}
		return checkObject(dec, t, path)
	default:
		return invalid(path, JobFieldType, path)
	}
	return nil
}

// checkObject checks the members of an object whose '{' was read.
func checkObject(dec *json.Decoder, t reflect.Type, path string) error {
	var fields map[string]reflect.Type
	if t.Kind() == reflect.Struct {
		fields = make(map[string]reflect.Type, t.NumField())
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
		}
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonSyntaxError(err, dec)
		}
		key, _ := tok.(string)
		p := key
		if path != "" {
			p = path + "." + key
		}
		if seen[key] {
			return invalid(p, JobDuplicateField, quoteShort(p))
		}
		seen[key] = true
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[key]; !ok {
				return invalid(p, JobUnknownField, quoteShort(p))
			}
		default: // map[string]string
			ft = t.Elem()
		}
		if err := checkValue(dec, ft, p); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return jsonSyntaxError(err, dec)
	}
	return nil
}

func kindError(path, want string) error {
	return invalid(path, JobFieldKind, path, want)
}

// jsonSyntaxError reports where the JSON is broken without quoting it: the
// decoder's own message quotes the offending character, which may be part
// of a secret.
func jsonSyntaxError(err error, dec *json.Decoder) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return invalid("", JobSyntax, se.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", JobTruncated)
	default:
		return invalid("", JobInvalidJSON, dec.InputOffset())
	}
}
