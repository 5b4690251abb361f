package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP sends commands to the machine's QMP socket and returns each answer's
// "return" (or an error with QEMU's "error").
func (m *Machine) QMP(cmds ...map[string]any) ([]json.RawMessage, error) {
	c, err := net.DialTimeout("unix", m.qmpPath(), 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("QMP: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	// The greeting, then capabilities negotiation.
	read := func() (map[string]json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, fmt.Errorf("QMP: %w", err)
			}
			var msg map[string]json.RawMessage
			if err := json.Unmarshal(line, &msg); err != nil {
				return nil, fmt.Errorf("QMP: %w", err)
			}
			if _, ev := msg["event"]; ev {
				continue
			}
			return msg, nil
		}
	}
	if _, err := read(); err != nil {
		return nil, err
	}
	var out []json.RawMessage
	for _, cmd := range append([]map[string]any{{"execute": "qmp_capabilities"}}, cmds...) {
		if err := enc.Encode(cmd); err != nil {
			return nil, fmt.Errorf("QMP: %w", err)
		}
		msg, err := read()
		if err != nil {
			return nil, err
		}
		if e, ok := msg["error"]; ok {
			return nil, fmt.Errorf("QMP %v: %s", cmd["execute"], e)
		}
		out = append(out, msg["return"])
		if cmd["execute"] == "send-key" {
			time.Sleep(40 * time.Millisecond) // a typist's pace: the guest's input queue is small
		}
	}
	return out[1:], nil
}

// qcodes are QEMU's key names (QKeyCode) for the characters SendKeys types;
// shifted ones need the shift key held.
var qcodes = func() map[rune][]string {
	m := map[rune][]string{' ': {"spc"}, '\n': {"ret"}, '-': {"minus"}, '=': {"equal"}, '.': {"dot"},
		',': {"comma"}, '/': {"slash"}, ';': {"semicolon"}, '\'': {"apostrophe"}, '>': {"shift", "dot"},
		'<': {"shift", "comma"}, '_': {"shift", "minus"}, '|': {"shift", "backslash"}, '\\': {"backslash"},
		':': {"shift", "semicolon"}, '"': {"shift", "apostrophe"}, '$': {"shift", "4"}, '&': {"shift", "7"}}
	for c := 'a'; c <= 'z'; c++ {
		m[c] = []string{string(c)}
		m[c-'a'+'A'] = []string{"shift", string(c)}
	}
	for c := '0'; c <= '9'; c++ {
		m[c] = []string{string(c)}
	}
	return m
}()

// SendKeys types text on the machine's keyboard (QMP send-key, one key
// combination per character), as a BMC's virtual keyboard would.
func (m *Machine) SendKeys(text string) error {
	var cmds []map[string]any
	for _, r := range text {
		keys, ok := qcodes[r]
		if !ok {
			return fmt.Errorf("SendKeys: no key for %q", r)
		}
		var ks []map[string]string
		for _, k := range keys {
			ks = append(ks, map[string]string{"type": "qcode", "data": k})
		}
		cmds = append(cmds, map[string]any{"execute": "send-key", "arguments": map[string]any{"keys": ks, "hold-time": 50}})
	}
	_, err := m.QMP(cmds...)
	return err
}
