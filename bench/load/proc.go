package load

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc follows a process's memory and CPU through /proc.
type proc struct {
	name            string
	pid             int
	rss0, rss, peak int64
	cpu0, last      float64
}

func newProc(p namedPid) *proc {
	pr := &proc{name: p.name, pid: p.pid}
	pr.rss0 = rssBytes(p.pid)
	pr.cpu0 = treeCPU(p.pid)
	return pr
}

func (p *proc) sample() {
	if r := rssBytes(p.pid); r > 0 {
		p.rss = r
		p.peak = max(p.peak, r)
	}
}

// cpuNow is the process's CPU seconds; a process that is gone (killed)
// keeps its last reading.
func (p *proc) cpuNow() float64 {
	if c := treeCPU(p.pid); c > 0 {
		p.last = c
		return c
	}
	return max(p.last, p.cpu0)
}

const clockTicks = 100 // USER_HZ on Linux

// statFields returns the fields of /proc/pid/stat after the command name.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// treeCPU is the CPU seconds of pid, its reaped children, and its live
// children (PostgreSQL's backends are children of the postmaster).
func treeCPU(pid int) float64 {
	f := statFields(pid)
	if len(f) < 15 {
		return 0
	}
	sum := 0.0
	for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseFloat(f[k], 64)
		sum += v
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil || c == pid {
			continue
		}
		cf := statFields(c)
		if len(cf) < 15 || cf[1] != strconv.Itoa(pid) {
			continue
		}
		for _, k := range []int{11, 12} {
			v, _ := strconv.ParseFloat(cf[k], 64)
			sum += v
		}
	}
	return sum / clockTicks
}

// machineCPU is the CPU seconds the whole machine spent busy (every
// process, ours and the others sharing it).
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	sum := 0.0
	for i, v := range f {
		// user nice system idle iowait irq softirq steal: busy is all
		// but idle (3) and iowait (4)
		if i == 0 || i == 4 || i == 5 || i > 8 {
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		sum += x
	}
	return sum / clockTicks
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func rssBytes(pid int) int64 {
	f := strings.Fields(procStatus(pid, "VmRSS"))
	if len(f) < 2 {
		return 0
	}
	kb, _ := strconv.ParseInt(f[1], 10, 64)
	return kb << 10
}

func procStatus(pid int, key string) string {
	if pid == 0 {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key+":") {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	return ""
}
