// Package ipmisim runs OpenIPMI's BMC simulator, ipmi_sim (Debian package
// openipmi), as a test server's BMC: IPMI 2.0 lanplus on a free 127.0.0.1
// port, and power on/off/cycle that start and stop a command of the
// caller's (the network-boot harness runs QEMU through it).
//
// Debian ships no example configuration, so the helper writes lan.conf and
// the .emu file itself (see writeConfig). Two ways to control the power:
//
//   - ModeChassisControl (the default): ipmi_sim's chassis_control program
//     is a small bash script that forwards each request over 127.0.0.1 to
//     this package, which starts, stops and supervises the command itself
//     (power on starts it, power off stops it — SIGTERM, then SIGKILL after
//     StopGrace —, a power cycle is ipmi_sim's off then on one second later,
//     a hard reset restarts it) and records every boot device set through
//     Set System Boot Options. ipmi_sim answers boot flags only in this
//     mode.
//   - ModeStartCmd: ipmi_sim's own startcmd: ipmi_sim forks the command on
//     power on and kills it on power off (poweroff_wait and kill_wait are
//     short). ipmi_sim then refuses the boot flags with completion code
//     0xcc, like a BMC without boot-device support.
//
// QEMU connects its BMC chardev to the "serial 15 ... codec VM" port
// (QEMUArgs): -chardev socket,...,reconnect=... -device
// ipmi-bmc-extern,chardev=... -device isa-ipmi-kcs,bmc=..., so the guest
// sees a KCS BMC whose chassis commands go the same way.
package ipmisim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Mode is how ipmi_sim controls the power.
type Mode int

const (
	ModeChassisControl Mode = iota // the helper starts and stops the command; boot flags answered
	ModeStartCmd                   // ipmi_sim's startcmd; boot flags refused
)

// Config describes one simulated BMC.
type Config struct {
	// Dir holds the configuration, the state directory and the logs. It
	// must exist; New does not remove it.
	Dir string
	// User and Password of the BMC's administrator (defaults: "admin" and
	// 16 random hex digits).
	User, Password string
	// Command is the machine: started on power on, stopped on power off.
	// Empty: a placeholder that just sleeps, so the power state is a real
	// process either way.
	Command []string
	// CommandFor, when set, gives the command instead of Command, once the
	// simulator's ports are known (QEMU needs VMAddr: append QEMUArgs). It
	// is called at each power on (ModeChassisControl) or once at start
	// (ModeStartCmd).
	CommandFor func(*Sim) []string
	// Env is added to the command's environment (ModeChassisControl).
	Env []string
	// Stdout and Stderr receive the command's output (ModeChassisControl;
	// default: Dir/machine.log).
	Stdout, Stderr io.Writer
	// Mode picks the power control.
	Mode Mode
	// PoweredOn starts the machine with the simulator (ipmi_sim's
	// startnow).
	PoweredOn bool
	// StopGrace is how long a stopped command has between SIGTERM and
	// SIGKILL (default 3 s; also ipmi_sim's kill_wait in ModeStartCmd).
	StopGrace time.Duration
	// PoweroffWait is ipmi_sim's poweroff_wait in ModeStartCmd: how long
	// it waits for a graceful shutdown of a connected VM before SIGTERM
	// (default 1 s; ipmi_sim's own default is 60 s, and 0 would disable the
	// kill altogether).
	PoweroffWait time.Duration
	// Program is the ipmi_sim binary (default: ipmi_sim from PATH or
	// /usr/bin).
	Program string
}

// Event is one thing the BMC did, in order.
type Event struct {
	Time time.Time
	Kind string // "power on", "power off", "reset", "boot device", "shutdown", "identify", "exited"
	// Boot is the boot device: for "boot device" the one set; for "power
	// on" and "reset" the one-time override that boot consumed ("" when
	// none was pending).
	Boot string
	PID  int // the command's process (power on, reset, exited)
}

// Sim is a running ipmi_sim.
type Sim struct {
	cfg                Config
	port, vmPort       int
	ctlLn              net.Listener
	token              string
	proc               *exec.Cmd
	procDone           chan struct{}
	logPath, machineLg string

	mu       sync.Mutex
	events   []Event
	machine  *machine // the running command (ModeChassisControl)
	pending  string   // boot device set and not yet consumed by a boot
	boots    []string // every boot device set, in order
	changed  chan struct{}
	closed   bool
	stopOnce sync.Once
	wg       sync.WaitGroup
}

type machine struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// ErrNoSimulator is returned when ipmi_sim (or bash) is not installed.
var ErrNoSimulator = errors.New("ipmi_sim is not installed (Debian package openipmi: scripts/install-test-deps.sh)")

// LookProgram finds ipmi_sim.
func LookProgram() (string, error) {
	if p, err := exec.LookPath("ipmi_sim"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/ipmi_sim", "/usr/sbin/ipmi_sim"} {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", ErrNoSimulator
}

// New writes the configuration, starts ipmi_sim and waits until it answers
// on its LAN port (at most 10 s, or ctx).
func New(ctx context.Context, cfg Config) (*Sim, error) {
	if cfg.Dir == "" {
		return nil, errors.New("ipmisim: Config.Dir is required")
	}
	if cfg.Program == "" {
		p, err := LookProgram()
		if err != nil {
			return nil, err
		}
		cfg.Program = p
	}
	if _, err := os.Stat("/bin/bash"); err != nil && cfg.Mode == ModeChassisControl {
		return nil, fmt.Errorf("ipmisim: the chassis control program needs /bin/bash: %w", err)
	}
	if cfg.User == "" {
		cfg.User = "admin"
	}
	if cfg.Password == "" {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		cfg.Password = hex.EncodeToString(b)
	}
	if strings.ContainsAny(cfg.User+cfg.Password, "\"\\ \n") {
		return nil, errors.New("ipmisim: user and password may not hold quotes, backslashes, spaces or line breaks")
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if cfg.PoweroffWait <= 0 {
		cfg.PoweroffWait = time.Second
	}
	if len(cfg.Command) == 0 && cfg.CommandFor == nil {
		cfg.Command = []string{"/bin/sleep", "86400"}
	}
	s := &Sim{cfg: cfg, changed: make(chan struct{}), logPath: filepath.Join(cfg.Dir, "ipmi_sim.log"),
		machineLg: filepath.Join(cfg.Dir, "machine.log")}
	var lastErr error
	for try := 0; try < 5; try++ { // a free port may be taken between the probe and ipmi_sim's bind
		if err := s.start(ctx); err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return s, nil
	}
	return nil, lastErr
}

func (s *Sim) start(ctx context.Context) error {
	var err error
	if s.port, err = freeUDPPort(); err != nil {
		return err
	}
	if s.vmPort, err = freeTCPPort(); err != nil {
		return err
	}
	if s.cfg.Mode == ModeChassisControl && s.ctlLn == nil {
		if s.ctlLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		s.token = hex.EncodeToString(b)
		s.wg.Add(1)
		go s.serveControl()
		if s.cfg.PoweredOn {
			if err := s.powerOn(); err != nil {
				return err
			}
		}
	}
	if err := s.writeConfig(); err != nil {
		return err
	}
	state := filepath.Join(s.cfg.Dir, "state")
	_ = os.RemoveAll(state) // persistent users/LAN settings would override lan.conf
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.cfg.Program, "-n", "-c", filepath.Join(s.cfg.Dir, "lan.conf"),
		"-f", filepath.Join(s.cfg.Dir, "sim.emu"), "-s", state)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ipmi_sim: %w", err)
	}
	s.proc, s.procDone = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.procDone) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(s.LANAddr(), 200*time.Millisecond) == nil {
			return nil
		}
		select {
		case <-s.procDone:
			return fmt.Errorf("ipmi_sim exited at start: %s", s.Log())
		case <-ctx.Done():
			s.killSim()
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			s.killSim()
			return fmt.Errorf("ipmi_sim did not answer on %s within 10s: %s", s.LANAddr(), s.Log())
		}
	}
}

// writeConfig writes lan.conf (channel 1 on 127.0.0.1, one admin user, the
// VM serial port for QEMU, the power control) and sim.emu (one BMC at
// 0x20).
func (s *Sim) writeConfig() error {
	var b strings.Builder
	fmt.Fprintf(&b, `# written by byoi's internal/ipmisim
name "byoi"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 %d codec VM
  user 2 true "%s" "%s" admin 10 md5
`, s.port, s.vmPort, s.cfg.User, s.cfg.Password)
	switch s.cfg.Mode {
	case ModeChassisControl:
		script := filepath.Join(s.cfg.Dir, "chassis-control")
		// ipmi_sim runs "PROGRAM 0x20 get power" and "PROGRAM 0x20 set
		// boot pxe" through popen and reads "power:1" back; a non-zero
		// exit is an error answer.
		body := fmt.Sprintf(`#!/bin/bash
# byoi internal/ipmisim: forwards ipmi_sim's chassis control to the test helper
exec 3<>/dev/tcp/127.0.0.1/%d || { echo "the ipmisim helper does not answer"; exit 1; }
printf '%%s %%s\n' %s "$*" >&3
IFS= read -r -t 30 status <&3 || { echo "no answer from the ipmisim helper"; exit 1; }
while IFS= read -r -t 30 line <&3; do printf '%%s\n' "$line"; done
[ "$status" = ok ]
`, s.ctlLn.Addr().(*net.TCPAddr).Port, s.token)
		if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
			return err
		}
		fmt.Fprintf(&b, "  chassis_control \"%s 0x20\"\n", script)
	case ModeStartCmd:
		fmt.Fprintf(&b, "  startcmd \"%s\"\n  startnow %v\n  poweroff_wait %d\n  kill_wait %d\n",
			shellJoin(s.command()), s.cfg.PoweredOn, secondsCeil(s.cfg.PoweroffWait), secondsCeil(s.cfg.StopGrace))
	}
	if err := os.WriteFile(filepath.Join(s.cfg.Dir, "lan.conf"), []byte(b.String()), 0o600); err != nil {
		return err
	}
	emu := `# written by byoi's internal/ipmisim: one BMC at 0x20
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
`
	return os.WriteFile(filepath.Join(s.cfg.Dir, "sim.emu"), []byte(emu), 0o600)
}

func secondsCeil(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// shellJoin quotes args for /bin/sh inside ipmi_sim's double-quoted
// startcmd string (no double quotes or backslashes allowed there).
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// serveControl answers the chassis control script.
func (s *Sim) serveControl() {
	defer s.wg.Done()
	for {
		conn, err := s.ctlLn.Accept()
		if err != nil {
			return
		}
		s.handle(conn)
	}
}

func (s *Sim) handle(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != s.token {
		fmt.Fprintf(conn, "err\nbad request\n")
		return
	}
	out, err := s.control(f[2], f[3:])
	if err != nil {
		fmt.Fprintf(conn, "err\n%s\n", err)
		return
	}
	fmt.Fprintf(conn, "ok\n%s", out)
}

// control runs one "get"/"set" of ipmi_sim's chassis control protocol.
func (s *Sim) control(op string, args []string) (string, error) {
	switch op {
	case "get":
		var out strings.Builder
		for _, p := range args {
			switch p {
			case "power":
				v := 0
				if s.Powered() {
					v = 1
				}
				fmt.Fprintf(&out, "power:%d\n", v)
			case "boot":
				s.mu.Lock()
				b := s.pending
				s.mu.Unlock()
				if b == "" {
					b = "none"
				}
				fmt.Fprintf(&out, "boot:%s\n", b)
			default:
				return "", fmt.Errorf("no such parameter %q", p)
			}
		}
		return out.String(), nil
	case "set":
		for len(args) >= 2 {
			p, v := args[0], args[1]
			args = args[2:]
			var err error
			switch p {
			case "power":
				if v == "1" {
					err = s.powerOn()
				} else {
					err = s.powerOff("power off")
				}
			case "reset":
				err = s.reset()
			case "shutdown":
				err = s.powerOff("shutdown")
			case "boot":
				s.setBoot(v)
			case "identify":
				if len(args) > 0 { // "identify INTERVAL FORCE"
					args = args[1:]
				}
				s.record(Event{Kind: "identify"})
			default:
				return "", fmt.Errorf("no such parameter %q", p)
			}
			if err != nil {
				return "", err
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("unknown operation %q", op)
}

// command is the machine's argv.
func (s *Sim) command() []string {
	if s.cfg.CommandFor != nil {
		return s.cfg.CommandFor(s)
	}
	return s.cfg.Command
}

func (s *Sim) setBoot(v string) {
	s.mu.Lock()
	if v == "none" || v == "default" {
		s.pending = ""
	} else {
		s.pending = v
	}
	s.boots = append(s.boots, v)
	s.mu.Unlock()
	s.record(Event{Kind: "boot device", Boot: v})
}

func (s *Sim) record(e Event) {
	e.Time = time.Now()
	s.mu.Lock()
	s.events = append(s.events, e)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// powerOn starts the command unless it runs; the boot consumes the pending
// boot device, as firmware does with a one-time override.
func (s *Sim) powerOn() error {
	argv := s.command() // outside the lock: CommandFor may call the Sim's methods
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("the simulator is closed")
	}
	if s.machine != nil {
		s.mu.Unlock()
		return nil
	}
	if len(argv) == 0 {
		s.mu.Unlock()
		return errors.New("no command to power on")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	cmd.Dir = s.cfg.Dir
	var logf *os.File
	if s.cfg.Stdout == nil || s.cfg.Stderr == nil {
		var err error
		logf, err = os.OpenFile(s.machineLg, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			s.mu.Unlock()
			return err
		}
	}
	cmd.Stdout, cmd.Stderr = s.cfg.Stdout, s.cfg.Stderr
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	if cmd.Stderr == nil {
		cmd.Stderr = logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err := cmd.Start()
	if logf != nil {
		logf.Close()
	}
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start the machine: %w", err)
	}
	m := &machine{cmd: cmd, done: make(chan struct{})}
	s.machine = m
	boot := s.pending
	s.pending = ""
	s.mu.Unlock()
	s.record(Event{Kind: "power on", Boot: boot, PID: cmd.Process.Pid})
	go func() {
		_ = cmd.Wait()
		close(m.done)
		s.mu.Lock()
		if s.machine == m {
			s.machine = nil
		}
		s.mu.Unlock()
		s.record(Event{Kind: "exited", PID: cmd.Process.Pid})
	}()
	return nil
}

// powerOff stops the command: SIGTERM to its process group, SIGKILL after
// StopGrace; it returns once the command is gone.
func (s *Sim) powerOff(kind string) error {
	s.mu.Lock()
	m := s.machine
	s.mu.Unlock()
	s.record(Event{Kind: kind})
	if m == nil {
		return nil
	}
	pid := m.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-m.done:
		return nil
	case <-time.After(s.cfg.StopGrace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-m.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("the machine (pid %d) did not stop", pid)
	}
}

func (s *Sim) reset() error {
	if err := s.powerOff("reset"); err != nil {
		return err
	}
	return s.powerOn()
}

// LANAddr is the BMC's IPMI LAN address, "127.0.0.1:PORT" (UDP).
func (s *Sim) LANAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the BMC's UDP port.
func (s *Sim) Port() int { return s.port }

// User is the BMC's user name.
func (s *Sim) User() string { return s.cfg.User }

// Password is the BMC's password.
func (s *Sim) Password() string { return s.cfg.Password }

// URL is the BMC spec byoi-api takes: "ipmi://USER@127.0.0.1:PORT".
func (s *Sim) URL() string { return "ipmi://" + s.cfg.User + "@" + s.LANAddr() }

// VMAddr is where QEMU's BMC chardev connects (TCP, ipmi_sim's VM codec).
func (s *Sim) VMAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.vmPort)) }

// QEMUArgs are the QEMU options that give the guest this BMC: a KCS
// interface backed by ipmi-bmc-extern on a socket chardev to VMAddr.
// reconnect keeps QEMU retrying if ipmi_sim restarts. id names the
// chardev and the device ("bmc0" by default).
func (s *Sim) QEMUArgs(id string) []string {
	if id == "" {
		id = "bmc0"
	}
	return []string{
		"-chardev", fmt.Sprintf("socket,id=%s-chr,host=127.0.0.1,port=%d,reconnect=2", id, s.vmPort),
		"-device", fmt.Sprintf("ipmi-bmc-extern,id=%s,chardev=%s-chr", id, id),
		"-device", fmt.Sprintf("isa-ipmi-kcs,bmc=%s", id),
	}
}

// Powered reports whether the command runs (ModeChassisControl; in
// ModeStartCmd ask the BMC, e.g. with Ipmitool).
func (s *Sim) Powered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.machine != nil
}

// PID is the running command's process id, 0 when off.
func (s *Sim) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.machine == nil {
		return 0
	}
	return s.machine.cmd.Process.Pid
}

// BootDevices lists every boot device set through the BMC, in order
// ("pxe", "none", "cdrom"...), as ipmi_sim passed them on.
func (s *Sim) BootDevices() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.boots...)
}

// PendingBoot is the one-time boot device no boot has consumed yet.
func (s *Sim) PendingBoot() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending
}

// Events returns what happened so far.
func (s *Sim) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// WaitEvent waits until an event after the first n satisfies match, and
// returns it with its index.
func (s *Sim) WaitEvent(ctx context.Context, n int, match func(Event) bool) (Event, int, error) {
	for {
		s.mu.Lock()
		for i := n; i < len(s.events); i++ {
			if match(s.events[i]) {
				e := s.events[i]
				s.mu.Unlock()
				return e, i, nil
			}
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Event{}, 0, ctx.Err()
		}
	}
}

// Log returns ipmi_sim's output (its errors before syslog takes over).
func (s *Sim) Log() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return strings.TrimSpace(string(b))
}

// Ipmitool runs ipmitool -I lanplus against the BMC (the independent
// judge): cipher suite 3 (ipmi_sim has no suite 17, and without -C the
// suite discovery ipmi_sim ignores costs ipmitool 10 s), the password from
// a file, never on the command line. It returns stdout.
func (s *Sim) Ipmitool(ctx context.Context, args ...string) (string, error) {
	bin, err := exec.LookPath("ipmitool")
	if err != nil {
		if _, e := os.Stat("/usr/bin/ipmitool"); e != nil {
			return "", fmt.Errorf("ipmitool is not installed (Debian package ipmitool): %w", err)
		}
		bin = "/usr/bin/ipmitool"
	}
	pwFile := filepath.Join(s.cfg.Dir, "ipmitool.pw")
	if err := os.WriteFile(pwFile, []byte(s.cfg.Password), 0o600); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	full := append([]string{"-I", "lanplus", "-C", "3", "-N", "1", "-R", "3", "-H", "127.0.0.1", "-p", strconv.Itoa(s.port),
		"-U", s.cfg.User, "-f", pwFile}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ipmitool %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Close stops the machine and ipmi_sim. It is safe to call twice.
func (s *Sim) Close() error {
	var err error
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.killSim()
		if s.ctlLn != nil {
			s.ctlLn.Close()
		}
		s.wg.Wait()
		err = s.powerOff("power off")
	})
	return err
}

// killSim ends ipmi_sim (and, in ModeStartCmd, the command it forked,
// which shares its process group).
func (s *Sim) killSim() {
	if s.proc == nil || s.proc.Process == nil {
		return
	}
	pid := s.proc.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-s.procDone:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-s.procDone
	}
}

// ping sends an RMCP presence ping (ASF, DMTF DSP0136 §3.2.4.1) and waits
// for the pong.
func ping(addr string, timeout time.Duration) error {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	msg := []byte{
		0x06, 0x00, 0xff, 0x06, // RMCP v1.0, reserved, no ACK (seq 0xff), class ASF
		0x00, 0x00, 0x11, 0xbe, // IANA enterprise number 4542 (ASF)
		0x80, 0x00, 0x00, 0x00, // presence ping, tag, reserved, data length 0
	}
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if n < 9 || buf[3] != 0x06 || buf[8] != 0x40 {
		return errors.New("not an RMCP presence pong")
	}
	return nil
}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
