package power

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/clock"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/hal/mock"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/transport/udp"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/byoi/byoi/job"
)

// testBMC is go-ipmi's reference BMC (pkg/server) on 127.0.0.1 with a
// chassis the test controls: it sees the boot flags byte for byte.
type testBMC struct {
	addr    *net.UDPAddr
	chassis *testChassis
}

type testChassis struct {
	*mock.Chassis
	cycles    atomic.Int32
	block     chan struct{} // when set, SetPower and PowerCycle wait on it
	bootErr   error         // returned by SetBootFlags
	powerErr  error         // returned by SetPower
	mu        sync.Mutex
	bootFlags []types.BootOptionParam_BootFlags
}

func (c *testChassis) SetPower(ctx context.Context, on bool) error {
	if c.block != nil {
		<-c.block
	}
	if c.powerErr != nil {
		return c.powerErr
	}
	return c.Chassis.SetPower(ctx, on)
}

func (c *testChassis) PowerCycle(ctx context.Context) error {
	c.cycles.Add(1)
	if c.block != nil {
		<-c.block
	}
	return c.Chassis.PowerCycle(ctx)
}

func (c *testChassis) SetBootFlags(ctx context.Context, f *types.BootOptionParam_BootFlags) error {
	if c.bootErr != nil {
		return c.bootErr
	}
	c.mu.Lock()
	c.bootFlags = append(c.bootFlags, *f)
	c.mu.Unlock()
	return c.Chassis.SetBootFlags(ctx, f)
}

type testHAL struct {
	*mock.HAL
	ch *testChassis
}

func (h testHAL) Chassis() hal.ChassisHAL { return h.ch }

func startTestBMC(t *testing.T, user, pw string, priv bmc.PrivilegeLevel, setup func(*testChassis)) *testBMC {
	t.Helper()
	m := mock.New()
	ch := &testChassis{Chassis: m.Chassis().(*mock.Chassis)}
	if setup != nil {
		setup(ch)
	}
	var guid [16]byte
	copy(guid[:], "byoi-power-test!")
	b := bmc.New(bmc.DeviceInfo{DeviceID: 1, IPMIVersion: 0x20}, guid, testHAL{m, ch}, bmc.WithClock(clock.Real))
	u, err := b.Users.Add(2, user)
	if err != nil {
		t.Fatal(err)
	}
	u.SetPassword([]byte(pw))
	u.Enabled = true
	u.ChannelAccess[1] = bmc.UserChannelAccess{MaxPrivilege: priv, Enabled: true}
	conn, err := udp.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewServer(b, conn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		if ch.block != nil {
			close(ch.block)
		}
		cancel()
		conn.Close()
		<-done
	})
	return &testBMC{addr: conn.LocalAddr().(*net.UDPAddr), chassis: ch}
}

func (b *testBMC) driver(t *testing.T, user, pw string, o Options) *IPMI {
	t.Helper()
	spec, err := ParseBMC(fmt.Sprintf("ipmi://%s@127.0.0.1:%d", user, b.addr.Port))
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewIPMI(spec, mustPassword(t, pw), o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestBootFlagsOnTheWire: the override is "valid, next boot only, force
// PXE", with the EFI boot type exactly on UEFI servers.
func TestBootFlagsOnTheWire(t *testing.T) {
	b := startTestBMC(t, "admin", "pw-on-the-wire", bmc.PrivilegeLevelAdministrator, nil)
	d := b.driver(t, "admin", "pw-on-the-wire", Options{})
	for _, mode := range []BootMode{BootUEFI, BootLegacy} {
		if err := d.BootFromNetwork(t.Context(), mode); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
	}
	b.chassis.mu.Lock()
	got := b.chassis.bootFlags
	b.chassis.mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("the BMC saw %d boot flags writes, want 2", len(got))
	}
	for i, want := range []types.BIOSBootType{types.BIOSBootTypeEFI, types.BIOSBootTypeLegacy} {
		f := got[i]
		if !f.BootFlagsValid || f.Persist || f.BIOSBootType != want || f.BootDeviceSelector != types.BootDeviceSelectorForcePXE {
			t.Errorf("write %d: valid %v persist %v type %v device %v; want valid, one-time, %v, force PXE",
				i, f.BootFlagsValid, f.Persist, f.BIOSBootType, f.BootDeviceSelector, want)
		}
	}
	// An Operator-level account is enough for everything byoi does.
	ob := startTestBMC(t, "oper", "pw-operator", bmc.PrivilegeLevelOperator, nil)
	od := ob.driver(t, "oper", "pw-operator", Options{})
	if _, err := Reboot(t.Context(), od, BootUEFI); err != nil {
		t.Errorf("an Operator account: %v", err)
	}
}

// TestCycleNotRepeated: a power cycle the BMC received but did not answer
// in time is not sent again (the server would reboot twice): ErrTimeout
// after one try, though Attempts allows three. Power on, idempotent, is
// retried.
func TestCycleNotRepeated(t *testing.T) {
	b := startTestBMC(t, "admin", "pw-cycle", bmc.PrivilegeLevelAdministrator, func(c *testChassis) { c.block = make(chan struct{}) })
	d := b.driver(t, "admin", "pw-cycle", Options{Timeout: 200 * time.Millisecond, Retries: -1, Attempts: 3, Backoff: 50 * time.Millisecond})
	start := time.Now()
	err := d.Cycle(t.Context())
	var pe *Error
	if !errors.Is(err, ErrTimeout) || !errors.As(err, &pe) || pe.MessageCode() != job.PowerTimeout {
		t.Fatalf("Cycle against a BMC that never answers the command: %v, want ErrTimeout", err)
	}
	if n := b.chassis.cycles.Load(); n != 1 {
		t.Errorf("the BMC received %d power cycles, want 1", n)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Cycle took %v", el)
	}
	t.Logf("%v", err)
}

// TestWrongPassword: the login is refused at once with ErrCredentials,
// never retried (BMCs lock accounts), and no password is printed anywhere
// in the error chain.
func TestWrongPassword(t *testing.T) {
	b := startTestBMC(t, "admin", "right-password", bmc.PrivilegeLevelAdministrator, nil)
	for _, tc := range []struct{ user, pw, detail string }{
		{"admin", "Wrong-Password-1", "wrong user name or password"},
		// go-ipmi's BMC does not tell an unknown user apart (others
		// answer RMCP+ status 0x0d, "unknown user").
		{"nobody", "Wrong-Password-2", "wrong user name or password"},
	} {
		d := b.driver(t, tc.user, tc.pw, Options{Attempts: 5, Backoff: time.Second})
		start := time.Now()
		_, err := d.Status(t.Context())
		el := time.Since(start)
		checkCredentialError(t, err, tc.pw, tc.detail)
		if el > time.Second {
			t.Errorf("%s: the refusal took %v (retried?)", tc.user, el)
		}
	}
	// A user below Operator cannot drive the chassis.
	ub := startTestBMC(t, "viewer", "pw-viewer", bmc.PrivilegeLevelUser, nil)
	_, err := ub.driver(t, "viewer", "pw-viewer", Options{}).Status(t.Context())
	if !errors.Is(err, ErrCredentials) {
		t.Errorf("a User-level account: %v, want ErrCredentials", err)
	}
}

func checkCredentialError(t *testing.T, err error, pw, detail string) {
	t.Helper()
	var pe *Error
	if !errors.Is(err, ErrCredentials) || !errors.As(err, &pe) {
		t.Fatalf("err = %v, want ErrCredentials", err)
	}
	if pe.MessageCode() != job.PowerCredentials || pe.Detail != detail {
		t.Errorf("code %s detail %q, want %s %q", pe.MessageCode(), pe.Detail, job.PowerCredentials, detail)
	}
	if code, msg := job.Describe(err); code != job.PowerCredentials || msg != job.Text(job.PowerCredentials, string(OpStatus)) {
		t.Errorf("job.Describe = %s %q", code, msg)
	}
	for e := error(err); e != nil; e = errors.Unwrap(e) {
		for _, s := range []string{e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e)} {
			if strings.Contains(s, pw) {
				t.Fatalf("the password is in the error chain: %s", s)
			}
		}
	}
}

// TestUnreachable: nothing listening (refused at once), a BMC that never
// answers (silence: bounded by the datagram timeouts and attempts, and by
// OpTimeout), and a name that does not resolve.
func TestUnreachable(t *testing.T) {
	free, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentPort := silent.LocalAddr().(*net.UDPAddr).Port
	pw := mustPassword(t, "unreachable-pw")
	for _, tc := range []struct {
		name     string
		spec     string
		o        Options
		min, max time.Duration
		detail   string
	}{
		{"refused", fmt.Sprintf("ipmi://admin@127.0.0.1:%d", closedPort), Options{Attempts: 2, Backoff: 10 * time.Millisecond}, 0, 2 * time.Second, "connection refused"},
		// 2 attempts × 2 datagrams × 200 ms + 100 ms of backoff.
		{"silent", fmt.Sprintf("ipmi://admin@127.0.0.1:%d", silentPort), Options{Timeout: 200 * time.Millisecond, Retries: 1, Attempts: 2, Backoff: 100 * time.Millisecond}, 800 * time.Millisecond, 3 * time.Second, "no answer"},
		// OpTimeout cuts the attempts short.
		{"deadline", fmt.Sprintf("ipmi://admin@127.0.0.1:%d", silentPort), Options{Timeout: time.Second, Retries: 5, Attempts: 5, OpTimeout: 700 * time.Millisecond}, 600 * time.Millisecond, 2 * time.Second, "no answer"},
		{"dns", "ipmi://admin@no-such-bmc.invalid", Options{OpTimeout: 5 * time.Second, Attempts: 1}, 0, 6 * time.Second, "the BMC's host name does not resolve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseBMC(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			d, _ := NewIPMI(spec, pw, tc.o)
			start := time.Now()
			err = d.On(t.Context())
			el := time.Since(start)
			var pe *Error
			if !errors.Is(err, ErrUnreachable) || !errors.As(err, &pe) || pe.MessageCode() != job.PowerNoAnswer {
				t.Fatalf("err = %v (%#v), want ErrUnreachable", err, err)
			}
			if tc.name != "dns" && pe.Detail != tc.detail {
				t.Errorf("detail %q, want %q", pe.Detail, tc.detail)
			}
			if tc.name == "dns" && pe.Detail != tc.detail && !strings.Contains(pe.Detail, "no answer") {
				t.Errorf("detail %q", pe.Detail)
			}
			if el < tc.min || el > tc.max {
				t.Errorf("took %v, want between %v and %v", el, tc.min, tc.max)
			}
			if msg := err.Error(); msg != job.Text(job.PowerNoAnswer, string(OpOn)) {
				t.Errorf("message %q", msg)
			}
			t.Logf("%v after %v (%s)", err, el.Round(time.Millisecond), pe.Detail)
		})
	}
	// A cancelled caller is "interrupted", not a BMC failure.
	spec, _ := ParseBMC(fmt.Sprintf("ipmi://admin@127.0.0.1:%d", silentPort))
	d, _ := NewIPMI(spec, pw, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	if err := d.On(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	} else if code, _ := job.Describe(err); code != job.Interrupted {
		t.Errorf("cancelled: code %s", code)
	}
}

// TestPowerCodes triggers every catalog code of the power group
// (job.IsPowerCode), each from a real exchange with a BMC.
func TestPowerCodes(t *testing.T) {
	seen := map[job.Code]string{}
	note := func(how string, err error) {
		t.Helper()
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v is not a *power.Error", how, err)
			return
		}
		code, msg := job.Describe(err)
		if code != pe.MessageCode() || msg != err.Error() || strings.Contains(msg, "%!") {
			t.Errorf("%s: Describe %s %q", how, code, msg)
		}
		seen[code] = how + ": " + msg
	}
	ctx := t.Context()
	free, _ := net.ListenPacket("udp", "127.0.0.1:0")
	port := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	spec, _ := ParseBMC(fmt.Sprintf("ipmi://admin@127.0.0.1:%d", port))
	d, _ := NewIPMI(spec, mustPassword(t, "x"), Options{Attempts: 1})
	_, err := d.Status(ctx)
	note("unreachable", err)

	b := startTestBMC(t, "admin", "pw", bmc.PrivilegeLevelAdministrator, nil)
	_, err = b.driver(t, "admin", "bad", Options{}).Status(ctx)
	note("wrong password", err)

	slow := startTestBMC(t, "admin", "pw", bmc.PrivilegeLevelAdministrator, func(c *testChassis) { c.block = make(chan struct{}) })
	note("no answer after the login", slow.driver(t, "admin", "pw", Options{Timeout: 200 * time.Millisecond, Retries: -1, Attempts: 1}).Off(ctx))

	refusing := startTestBMC(t, "admin", "pw", bmc.PrivilegeLevelAdministrator, func(c *testChassis) {
		c.bootErr = hal.ErrNotSupported
		c.powerErr = errors.New("relay stuck")
		c.Chassis.On = true
	})
	rd := refusing.driver(t, "admin", "pw", Options{})
	err = rd.BootFromNetwork(ctx, BootUEFI)
	note("boot flags not supported", err)
	note("power on fails", rd.On(ctx))

	out, err := Reboot(ctx, rd, BootUEFI) // the refused override is tolerated; the cycle goes through
	if err != nil || out.Override != OverrideRefused || out.Action != ActionCycled {
		t.Errorf("Reboot with a refused override: %+v, %v", out, err)
	}
	code, msg := out.Warning()
	if code != job.WarnBootOverride || !strings.Contains(msg, "0x80") {
		t.Errorf("warning %s %q", code, msg)
	}
	seen[code] = "refused override: " + msg

	for _, c := range job.Codes() {
		if _, ok := seen[c]; job.IsPowerCode(c) && !ok {
			t.Errorf("power code %s is never triggered", c)
		}
	}
	for c, how := range seen {
		if !job.IsPowerCode(c) {
			t.Errorf("%s (%s) is not in the power group", c, how)
		}
		t.Logf("%s: %s", c, how)
	}
}
