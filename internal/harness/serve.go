package harness

import (
	"fmt"
	"net"
	"net/http"
	"time"
)

// FreePort is a TCP port free on 127.0.0.1 now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FileServer serves a directory on 127.0.0.1 (a guest reaches it as
// 10.0.2.2:Port through user-mode networking).
type FileServer struct {
	Port int
	srv  *http.Server
}

// ServeDir starts a FileServer for dir.
func ServeDir(dir string) (*FileServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &FileServer{Port: ln.Addr().(*net.TCPAddr).Port,
		srv: &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}}
	go s.srv.Serve(ln)
	return s, nil
}

// URL is the server's base URL from the host.
func (s *FileServer) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.Port) }

// GuestURL is the server's base URL from a guest on user-mode networking.
func (s *FileServer) GuestURL() string { return fmt.Sprintf("http://10.0.2.2:%d", s.Port) }

// Close stops the server.
func (s *FileServer) Close() error { return s.srv.Close() }
