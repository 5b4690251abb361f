package controlplane_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/controlplane"
)

// Raw HTTP for what go-ovh cannot do: replaying a signed request as it
// was, and sending a body slowly or not at all.

// signedReq is a request signed as go-ovh signs it, at the server's time.
func (e *env) signedReq(t *testing.T, cu *customer, method, p, body string) *http.Request {
	t.Helper()
	u := e.url + "/1.0" + p
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	ts := e.clock.Now().Unix()
	req.Header.Set("Content-Type", "application/json;charset=utf-8")
	req.Header.Set("X-Ovh-Application", cu.cred.ApplicationKey)
	req.Header.Set("X-Ovh-Consumer", cu.cred.ConsumerKey)
	req.Header.Set("X-Ovh-Timestamp", fmt.Sprint(ts))
	req.Header.Set("X-Ovh-Signature", controlplane.Sign(cu.cred.ApplicationSecret, cu.cred.ConsumerKey, method, u, []byte(body), ts))
	return req
}

// send sends req (again: its body is re-read from the start) and returns
// status, OVH class and message.
func send(t *testing.T, req *http.Request, body string) (int, string, string) {
	t.Helper()
	req.Body = io.NopCloser(strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb struct{ Class, Message string }
	json.Unmarshal(data, &eb)
	return resp.StatusCode, eb.Class, eb.Message
}

// slowConn is a request on its own connection whose body is sent by hand.
type slowConn struct {
	t    *testing.T
	conn net.Conn
	rd   *bufio.Reader
}

// startSlow sends the request line and headers (with Content-Length
// length) and the first bytes of the body, and leaves the rest unsent.
func startSlow(t *testing.T, baseURL, method, p string, hdr map[string]string, length int, first string) *slowConn {
	t.Helper()
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", method, p, u.Host, length)
	for k, v := range hdr {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n" + first)
	if _, err := conn.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	return &slowConn{t: t, conn: conn, rd: bufio.NewReader(conn)}
}

// write sends more of the body (an error once the server closed).
func (c *slowConn) write(s string) error {
	_, err := c.conn.Write([]byte(s))
	return err
}

// answer reads the answer (within limit): status, OVH class, message and
// the headers.
func (c *slowConn) answer(limit time.Duration) (int, string, string, http.Header) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(limit))
	resp, err := http.ReadResponse(c.rd, nil)
	if err != nil {
		c.t.Fatalf("no answer within %s: %v", limit, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb struct{ Class, Message string }
	json.Unmarshal(data, &eb)
	return resp.StatusCode, eb.Class, eb.Message, resp.Header
}

// closedWithin reports whether the server closed the connection within
// limit (reading whatever it sent first).
func (c *slowConn) closedWithin(limit time.Duration) bool {
	c.conn.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c.rd)
	var ne net.Error
	return err == nil || !(asNetErr(err, &ne) && ne.Timeout())
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}
