package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// decodeStrict decodes one JSON value into v, refusing what
// encoding/json lets through: a field name that matches only ignoring case,
// an unknown or repeated field, and trailing data. The walk follows v's
// type, so its depth is bounded by the type.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := checkValue(dec, reflect.TypeOf(v).Elem(), ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("field %q has the wrong type", te.Field)
		}
		return errors.New("JSON value does not match the expected shape")
	}
	return nil
}

func syntaxErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("not valid JSON (unexpected end of input)")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("not valid JSON (syntax error at byte %d)", se.Offset)
	}
	return errors.New("not valid JSON")
}

// checkValue reads the next value from dec and checks it against t.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	d, isDelim := tok.(json.Delim)
	if !isDelim {
		return nil // a scalar: the decoder checks its type
	}
	switch {
	case d == '{' && t.Kind() == reflect.Struct:
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			fields[name] = f.Type
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return syntaxErr(err)
			}
			key, _ := kt.(string)
			ft, ok := fields[key]
			if !ok {
				return fmt.Errorf("unknown field %q", truncate(path+key, 64))
			}
			if seen[key] {
				return fmt.Errorf("field %q is given more than once", path+key)
			}
			seen[key] = true
			if err := checkValue(dec, ft, path+key+"."); err != nil {
				return err
			}
		}
	case d == '[' && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s%d.", path, i)); err != nil {
				return err
			}
		}
	default:
		// A map, json.RawMessage, or a kind mismatch the decoder
		// reports: skip the value's contents.
		depth := 1
		for depth > 0 {
			tok, err := dec.Token()
			if err != nil {
				return syntaxErr(err)
			}
			if d, ok := tok.(json.Delim); ok {
				if d == '{' || d == '[' {
					depth++
				} else {
					depth--
				}
			}
		}
		return nil
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return syntaxErr(err)
	}
	return nil
}
