package power

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// Options bound the BMC calls. Zero values take the defaults.
type Options struct {
	// Timeout is how long one datagram waits for its answer (default 1 s,
	// ipmitool's lanplus default).
	Timeout time.Duration
	// Retries is how many times an unanswered datagram is sent again
	// (default 2; negative: none).
	Retries int
	// OpTimeout bounds one operation as a whole: login, command, retries
	// and backoff (default 30 s). The caller's context may be shorter.
	OpTimeout time.Duration
	// Attempts is how many times an operation is tried when it failed for
	// want of an answer and trying again is safe (default 3; 1: once).
	Attempts int
	// Backoff is the wait before the second attempt, doubled before each
	// next one (default 500 ms, at most 8 s).
	Backoff time.Duration
	// CipherSuites are the RMCP+ cipher suites tried in order (default
	// 17, then 3: HMAC-SHA256 with AES, then HMAC-SHA1 with AES, which
	// nearly every BMC has). Discovery through Get Channel Cipher Suites
	// is not used: some BMCs (ipmi_sim among them) never answer it, which
	// costs a timeout per login.
	CipherSuites []uint8
	// Logger receives debug lines (operation, BMC address, outcome; never
	// a password). Nil: no logging.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Retries == 0 {
		o.Retries = 2
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 30 * time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if o.Backoff <= 0 {
		o.Backoff = 500 * time.Millisecond
	}
	if len(o.CipherSuites) == 0 {
		o.CipherSuites = []uint8{uint8(types.CipherSuiteID17), uint8(types.CipherSuiteID3)}
	}
	return o
}

// IPMI drives a server through its BMC with IPMI 2.0 over LAN (lanplus,
// RMCP+). Each operation opens a session at the Operator privilege (all
// chassis commands need; an Administrator account works too), runs, and
// closes it.
type IPMI struct {
	bmc BMC
	pw  Password
	o   Options
}

// NewIPMI returns the IPMI driver of spec (which ParseBMC made) with its
// password.
func NewIPMI(spec BMC, pw Password, opts Options) (*IPMI, error) {
	if spec.Driver != DriverIPMI {
		return nil, badSpec("not an ipmi:// BMC")
	}
	if err := checkUser(spec.User); err != nil {
		return nil, err
	}
	if spec.Host == "" || spec.Port < 1 || spec.Port > 65535 {
		return nil, badSpec("the host or the port is missing")
	}
	if pw.IsZero() {
		return nil, fmt.Errorf("%w: it is empty", ErrBadPassword)
	}
	return &IPMI{bmc: spec, pw: pw, o: opts.withDefaults()}, nil
}

// Kind returns "ipmi".
func (d IPMI) Kind() string { return DriverIPMI }

// BMC returns the driver's spec.
func (d IPMI) BMC() BMC { return d.bmc }

// String returns the BMC's spec: "ipmi://USER@HOST:PORT", no password.
func (d IPMI) String() string { return d.bmc.String() }

// GoString is String: %#v must not print the password field.
func (d IPMI) GoString() string { return "power.IPMI(" + d.bmc.String() + ")" }

// Format prints String for every verb, so no fmt verb reaches the fields.
func (d IPMI) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, d.GoString()) //nolint:errcheck
		return
	}
	io.WriteString(f, d.String()) //nolint:errcheck
}

// LogValue makes slog print the spec.
func (d IPMI) LogValue() slog.Value { return slog.StringValue(d.String()) }

// Status reads the chassis power state (Get Chassis Status).
func (d *IPMI) Status(ctx context.Context) (State, error) {
	var st State
	err := d.do(ctx, OpStatus, true, func(ctx context.Context, c *client.Client) error {
		res, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		st = Off
		if res.PowerIsOn {
			st = On
		}
		return nil
	})
	return st, err
}

// On sends Chassis Control "power up".
func (d *IPMI) On(ctx context.Context) error {
	return d.control(ctx, OpOn, chassis.ChassisControlPowerUp, true)
}

// Off sends Chassis Control "power down" (a hard power off).
func (d *IPMI) Off(ctx context.Context) error {
	return d.control(ctx, OpOff, chassis.ChassisControlPowerDown, true)
}

// Cycle sends Chassis Control "power cycle". Once the command may have
// reached the BMC it is not sent again, neither by a new attempt nor as a
// retransmitted datagram: two cycles would reboot the server twice, and
// IPMI leaves the detection of a repeated request to the BMC (ipmi_sim
// has none, and answers only once the power is down, which takes seconds).
// The command's datagram is sent once and its answer awaited for as long
// as the retransmissions would have taken, and at least cycleWaits
// datagram timeouts (5 s by default; the login before it is retried as
// usual, and OpTimeout bounds the whole).
func (d *IPMI) Cycle(ctx context.Context) error {
	return d.do(ctx, OpCycle, false, func(ctx context.Context, c *client.Client) error {
		c.WithRetry(0).WithTimeout(time.Duration(max(d.o.Retries+1, cycleWaits)) * d.o.Timeout)
		_, err := c.ChassisControl(ctx, chassis.ChassisControlPowerCycle)
		return err
	})
}

// cycleWaits is the least a power cycle's answer is waited for, in
// datagram timeouts.
const cycleWaits = 5

func (d *IPMI) control(ctx context.Context, op Op, cc chassis.ChassisControl, idempotent bool) error {
	return d.do(ctx, op, idempotent, func(ctx context.Context, c *client.Client) error {
		_, err := c.ChassisControl(ctx, cc)
		return err
	})
}

// BootFromNetwork sets the boot flags (Set System Boot Options, parameter
// 5) to "valid, next boot only, force PXE", with the EFI boot type when
// mode is BootUEFI, as ipmitool's "chassis bootdev pxe options=efiboot"
// does: inside "set in progress" when the BMC has it, after clearing the
// boot-info acknowledgements when it has those. Only the boot flags
// themselves must be accepted.
func (d *IPMI) BootFromNetwork(ctx context.Context, mode BootMode) error {
	bootType := types.BIOSBootTypeLegacy
	if mode == BootUEFI {
		bootType = types.BIOSBootTypeEFI
	}
	return d.do(ctx, OpBootOverride, true, func(ctx context.Context, c *client.Client) error {
		inProgress := c.SetBootParamSetInProgress(ctx, types.SetInProgress_SetInProgress) == nil
		if ctx.Err() != nil {
			return ctx.Err()
		}
		_ = c.SetBootParamClearAck(ctx, types.BootInfoAcknowledgeByBIOSPOST) // optional (§28.13 parameter 4)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err := c.SetSystemBootOptionsParamFor(ctx, &types.BootOptionParam_BootFlags{
			BootFlagsValid:     true,
			Persist:            false,
			BIOSBootType:       bootType,
			BootDeviceSelector: types.BootDeviceSelectorForcePXE,
		})
		if inProgress {
			_ = c.SetBootParamSetInProgress(ctx, types.SetInProgress_SetComplete)
		}
		return err
	})
}

// do runs fn in a fresh session, within OpTimeout, trying again with
// backoff when nothing answered and trying again is safe (idempotent
// operations, or a failure before the login completed).
func (d *IPMI) do(parent context.Context, op Op, idempotent bool, fn func(context.Context, *client.Client) error) error {
	ctx, cancel := context.WithTimeout(parent, d.o.OpTimeout)
	defer cancel()
	start := time.Now()
	backoff := d.o.Backoff
	var last *Error
	for attempt := 1; ; attempt++ {
		loggedIn, answered, err := d.once(ctx, fn)
		if err == nil {
			d.log(parent, "bmc operation done", op, attempt, start, nil)
			return nil
		}
		if errors.Is(parent.Err(), context.Canceled) {
			return fmt.Errorf("%s on %s: %w", op, d.bmc.Addr(), context.Canceled)
		}
		last = d.classify(op, err, answered, loggedIn, time.Since(start))
		retry := (last.Kind == ErrUnreachable || last.Kind == ErrTimeout) && (idempotent || !loggedIn)
		if !retry || attempt >= d.o.Attempts || ctx.Err() != nil {
			break
		}
		d.log(parent, "bmc operation retried", op, attempt, start, last)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, 8*time.Second)
	}
	if ctx.Err() != nil && last.Kind != ErrCredentials && last.Kind != ErrUnsupported && last.Kind != ErrFailed {
		last.Timeout = d.o.OpTimeout
		if dl, ok := parent.Deadline(); ok && time.Until(dl) < 0 {
			last.Timeout = time.Since(start).Round(time.Millisecond)
		}
	}
	d.log(parent, "bmc operation failed", op, 0, start, last)
	return last
}

func (d *IPMI) log(ctx context.Context, msg string, op Op, attempt int, start time.Time, err *Error) {
	if d.o.Logger == nil {
		return
	}
	attrs := []any{"bmc", d.bmc.String(), "op", string(op), "elapsed", time.Since(start).Round(time.Millisecond)}
	if attempt > 0 {
		attrs = append(attrs, "attempt", attempt)
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
		if err.Err != nil {
			attrs = append(attrs, "cause", err.Err.Error())
		}
	}
	d.o.Logger.DebugContext(ctx, msg, attrs...)
}

// once logs in, runs fn and logs out. loggedIn tells whether the session
// was established (so a command may have been sent); answered whether the
// BMC sent anything back at all.
func (d *IPMI) once(ctx context.Context, fn func(context.Context, *client.Client) error) (loggedIn, answered bool, err error) {
	ip, err := d.resolve(ctx)
	if err != nil {
		return false, false, err
	}
	dial := &countingDialer{ip: ip, port: d.bmc.Port}
	c, err := client.NewClient(ip.String(), d.bmc.Port, d.bmc.User, d.pw.Reveal())
	if err != nil {
		return false, false, err
	}
	suites := make([]types.CipherSuiteID, 0, len(d.o.CipherSuites)+1)
	for _, s := range d.o.CipherSuites {
		suites = append(suites, types.CipherSuiteID(s))
	}
	c.WithTimeout(d.o.Timeout).WithRetry(d.o.Retries).WithCipherSuiteID(suites...).
		WithMaxPrivilegeLevel(types.PrivilegeLevelOperator).WithUDPProxy(dial)
	if err := c.Connect(ctx); err != nil {
		// The socket is closed at once: a session-close datagram to a BMC
		// that did not log us in would only wait for its timeout.
		done, cancel := context.WithCancel(context.Background())
		cancel()
		_ = c.Close(done)
		return false, dial.answered(), err
	}
	err = fn(ctx, c)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.o.Timeout)
	defer cancel()
	_ = c.Close(closeCtx)
	return true, true, err
}

// resolve looks the host up within ctx (go-ipmi would resolve it without
// a deadline).
func (d *IPMI) resolve(ctx context.Context) (net.IP, error) {
	if ip := net.ParseIP(d.bmc.Host); ip != nil {
		return ip, nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, d.bmc.Host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, &net.DNSError{Err: "no address", Name: d.bmc.Host, IsNotFound: true}
	}
	return addrs[0].IP, nil
}

// countingDialer gives go-ipmi its UDP socket and notes whether any
// datagram came back: silence is "unreachable", an answer followed by
// silence is a "timeout".
type countingDialer struct {
	ip   net.IP
	port int
	got  atomic.Int64
}

func (cd *countingDialer) Dial(network, _ string) (net.Conn, error) {
	conn, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: cd.ip, Port: cd.port})
	if err != nil {
		return nil, err
	}
	return &countingConn{UDPConn: conn, got: &cd.got}, nil
}

func (cd *countingDialer) answered() bool { return cd.got.Load() > 0 }

type countingConn struct {
	*net.UDPConn
	got *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.UDPConn.Read(p)
	if n > 0 {
		c.got.Add(int64(n))
	}
	return n, err
}

// classify turns a library error into an *Error. The library's own text
// stays in Err (for logs); Detail is in byoi's words.
func (d *IPMI) classify(op Op, err error, answered, loggedIn bool, elapsed time.Duration) *Error {
	e := &Error{Op: op, Err: err, Timeout: elapsed.Round(time.Millisecond)}
	msg := err.Error()
	var dnsErr *net.DNSError
	var rs *types.RmcpStatusError
	var re *types.ResponseError
	switch {
	case errors.As(err, &dnsErr):
		e.Kind, e.Detail = ErrUnreachable, "the BMC's host name does not resolve"
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Kind, e.Detail = ErrUnreachable, "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		e.Kind, e.Detail = ErrUnreachable, "no route to the BMC"
	case errors.As(err, &re):
		e.Kind, e.Detail = completionKind(re.CompletionCode())
	case credentialRefusal(msg):
		// Connect joins the errors of every cipher suite tried with %v,
		// so the sentinels are found by their text, taken from the
		// library itself.
		e.Kind, e.Detail = ErrCredentials, credentialDetail(msg)
	case errors.As(err, &rs):
		e.Kind, e.Detail = rmcpKind(rs.StatusCode())
	case !answered:
		e.Kind, e.Detail = ErrUnreachable, "no answer"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err) || strings.Contains(msg, "IPMI LAN:"):
		e.Kind, e.Detail = ErrTimeout, "no answer in time"
	case !loggedIn:
		if k, det, ok := rmcpKindFromText(msg); ok {
			e.Kind, e.Detail = k, det
		} else {
			e.Kind, e.Detail = ErrFailed, "the login failed"
		}
	default:
		e.Kind, e.Detail = ErrFailed, "an unexpected answer"
	}
	if e.Kind == ErrTimeout && !loggedIn && !answered {
		e.Kind = ErrUnreachable
	}
	return e
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// credentialRefusal recognises a refused login in go-ipmi's joined error
// text: a RAKP 2 authentication code that does not match (the password),
// or the BMC's RMCP+ status for an unknown user or a privilege the user
// lacks.
func credentialRefusal(msg string) bool {
	if strings.Contains(msg, client.ErrRAKPAuthentication.Error()) {
		return true
	}
	for _, c := range credentialStatuses {
		if strings.Contains(msg, types.NewRmcpStatusError(c).Error()) {
			return true
		}
	}
	return strings.Contains(msg, "SetSessionPrivilegeLevel") && strings.Contains(msg, "cc: 0x8")
}

var credentialStatuses = []types.RmcpStatusCode{
	types.RmcpStatusCodeUnauthorizedName,
	types.RmcpStatusCodeInvalidRole,
	types.RmcpStatusCodeUnauthorizedRoleOfPriLevel,
	types.RmcpStatusCodeInvalidNameLength,
	types.RmcpStatusCodeInvalidIntegrityCheckValue,
}

func credentialDetail(msg string) string {
	switch {
	case strings.Contains(msg, client.ErrRAKPAuthentication.Error()),
		strings.Contains(msg, types.NewRmcpStatusError(types.RmcpStatusCodeInvalidIntegrityCheckValue).Error()):
		// BMCs answer an unknown user this way too (so as not to tell
		// which users exist).
		return "wrong user name or password"
	case strings.Contains(msg, types.NewRmcpStatusError(types.RmcpStatusCodeUnauthorizedName).Error()),
		strings.Contains(msg, types.NewRmcpStatusError(types.RmcpStatusCodeInvalidNameLength).Error()):
		return "unknown user"
	default:
		return "the user lacks the Operator privilege"
	}
}

func rmcpKind(c types.RmcpStatusCode) (error, string) {
	for _, cc := range credentialStatuses {
		if c == cc {
			return ErrCredentials, fmt.Sprintf("RMCP+ status %#02x", uint8(c))
		}
	}
	switch c {
	case types.RmcpStatusCodeNoCipherSuiteMatch, types.RmcpStatusCodeInvalidAuthAlg,
		types.RmcpStatusCodeInvalidIntegrityAlg, types.RmcpStatusCodeInvalidConfidentAlg,
		types.RmcpStatusCodeNoMatchingAuthPayload, types.RmcpStatusCodeNoMatchingIntegrityPayload:
		return ErrUnsupported, "none of the RMCP+ cipher suites byoi offers"
	case types.RmcpStatusCodeNoResToCreateSess, types.RmcpStatusCodeNoResToCreateSessAtRole:
		return ErrFailed, "no free session on the BMC"
	}
	return ErrFailed, fmt.Sprintf("RMCP+ status %#02x", uint8(c))
}

func rmcpKindFromText(msg string) (error, string, bool) {
	for c := types.RmcpStatusCode(1); c <= 0x12; c++ {
		if strings.Contains(msg, types.NewRmcpStatusError(c).Error()) {
			k, det := rmcpKind(c)
			return k, det, true
		}
	}
	return nil, "", false
}

// completionKind maps an IPMI completion code (IPMI 2.0 Table 5-2 and the
// parameter codes of §28).
func completionKind(cc types.CompletionCode) (error, string) {
	detail := fmt.Sprintf("completion code %#02x", uint8(cc))
	switch cc {
	case types.CodeInvalidCommand, types.CodeInvalidCommandForLUN, types.CodeRequestDataFieldInvalid,
		types.CodeNotSupported, types.CodeParameterOutOfRange, types.CodeSubFnDisabled,
		types.CodeParameterNotSupported, types.CodeIllegalCommand:
		return ErrUnsupported, detail + " (" + ccName(cc) + ")"
	case types.CodeInsufficientPrivilege:
		return ErrCredentials, detail + " (insufficient privilege)"
	case types.CodeNodeBusy, types.CodeProcessTimeout, types.CodeCannotProvideResponseBMCInitialize:
		return ErrFailed, detail + " (the BMC is busy)"
	}
	return ErrFailed, detail
}

func ccName(cc types.CompletionCode) string {
	switch cc {
	case types.CodeInvalidCommand, types.CodeInvalidCommandForLUN, types.CodeIllegalCommand:
		return "invalid command"
	case types.CodeRequestDataFieldInvalid:
		return "invalid data field"
	case types.CodeParameterOutOfRange:
		return "parameter out of range"
	case types.CodeSubFnDisabled:
		return "disabled"
	case types.CodeParameterNotSupported:
		return "parameter not supported"
	default:
		return "not supported"
	}
}
