package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// maxJobBody is the body limit of the job POSTs: the job's own limit.
const maxJobBody = job.MaxJobSize

func rfc3339(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (s *Server) getTime(c *call) (int, any, error) {
	return http.StatusOK, s.cfg.Clock.Now().Unix(), nil
}

func (s *Server) listServers(c *call) (int, any, error) {
	list, err := s.st.ListServers(c.r.Context(), c.customer.ID)
	if err != nil {
		return 0, nil, err
	}
	names := make([]string, 0, len(list))
	for _, sv := range list {
		names = append(names, sv.Name)
	}
	return http.StatusOK, names, nil
}

// Boot types and ids.
func bootType(id int64) (string, bool) {
	switch id {
	case store.BootHarddisk:
		return "harddisk", true
	case store.BootRescue:
		return "rescue", true
	}
	return "", false
}

var bootTypes = map[string]bool{"harddisk": true, "internal": true, "ipxeCustomerScript": true, "network": true, "power": true, "rescue": true}

func (s *Server) listBoots(c *call) (int, any, error) {
	want := c.r.URL.Query().Get("bootType")
	if want != "" && !bootTypes[want] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "bootType", "harddisk, internal, ipxeCustomerScript, network, power or rescue")
	}
	ids := []int64{}
	for _, id := range []int64{store.BootHarddisk, store.BootRescue} {
		if t, _ := bootType(id); want == "" || want == t {
			ids = append(ids, id)
		}
	}
	return http.StatusOK, ids, nil
}

type bootView struct {
	BootID      int64   `json:"bootId"`
	BootType    string  `json:"bootType"`
	Description string  `json:"description"`
	Kernel      string  `json:"kernel"`
	URL         *string `json:"url"`
}

func (s *Server) getBoot(c *call) (int, any, error) {
	id, err := strconv.ParseInt(c.r.PathValue("bootId"), 10, 64)
	t, ok := bootType(id)
	if err != nil || !ok {
		return 0, nil, fail(kNotFound, job.APINotFound, "bootId = "+truncate(c.r.PathValue("bootId"), 20))
	}
	desc := job.Text(job.MsgBootHarddisk)
	if id == store.BootRescue {
		desc = job.Text(job.MsgBootRescue)
	}
	return http.StatusOK, bootView{BootID: id, BootType: t, Description: desc, Kernel: t}, nil
}

// createDeployment parses a job body in one shape and creates the
// deployment; the body is kept sealed, exactly as posted.
func (s *Server) createDeployment(c *call, shape job.Shape) (store.Task, error) {
	j, err := checkJob(c.server, shape, c.body)
	if err != nil {
		return store.Task{}, err
	}
	d, t, err := s.st.CreateDeployment(c.r.Context(), store.NewDeployment{
		ServerID:          c.server.ID,
		Shape:             shape,
		SealedJob:         s.cfg.Keys.Seal(c.body, jobAD(c.server.ID)),
		Checksum:          j.Checksum,
		EFIBootloaderPath: j.EFIBootloaderPath,
		MaxAttempts:       s.cfg.MaxAttempts,
		Now:               s.cfg.Clock.Now(),
	})
	if err != nil {
		return t, err
	}
	// The power loop reboots it into rescue (a server with a BMC).
	if _, err := s.queueReboot(c.r.Context(), c.server, d.ID, 0); err != nil {
		return t, err
	}
	return t, nil
}

// checkJob is every check of a job body posted in shape for server sv:
// the job package's parse and validation, then the disk group.
func checkJob(sv store.Server, shape job.Shape, body []byte) (*job.Job, error) {
	var j *job.Job
	var err error
	if shape == job.ShapeLegacy {
		j, err = job.ParseLegacy(body)
	} else {
		j, err = job.ParseReinstall(body)
	}
	if err != nil {
		return nil, err
	}
	if err := checkDiskGroup(sv, shape, j); err != nil {
		return nil, err
	}
	if err := checkDetect(sv, j); err != nil {
		return nil, err
	}
	return j, nil
}

// checkDiskGroup refuses a diskGroupId the server does not have, when its
// agent has told its disk groups.
func checkDiskGroup(sv store.Server, shape job.Shape, j *job.Job) error {
	if sv.Inventory == nil {
		return nil
	}
	var inv agentapi.Inventory
	if json.Unmarshal(sv.Inventory, &inv) != nil || j.DiskGroupID <= len(inv.DiskGroups) {
		return nil
	}
	var have []string
	for _, g := range inv.DiskGroups {
		have = append(have, fmt.Sprintf("%d (%s)", g.DiskGroupID, g.Description))
	}
	field := "diskGroupId"
	if shape == job.ShapeReinstall {
		field = "storage.diskGroupId"
	}
	return &job.ValidationError{Code: job.DiskGroupMissing, Field: field, Message: job.Text(job.DiskGroupMissing, j.DiskGroupID, strings.Join(have, ", "))}
}

func (s *Server) postBYOI(c *call) (int, any, error) {
	if _, err := s.createDeployment(c, job.ShapeLegacy); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nil, nil
}

// taskView is OVH's dedicated.server.Task.
type taskView struct {
	TaskID     int64   `json:"taskId"`
	Function   string  `json:"function"`
	Status     string  `json:"status"`
	Comment    string  `json:"comment"`
	StartDate  *string `json:"startDate"`
	DoneDate   *string `json:"doneDate"`
	LastUpdate *string `json:"lastUpdate,omitempty"`
	// The rest of OVH's dedicated.server.Task (issue 24): byoi's tasks
	// need no schedule, no planned intervention, no support ticket.
	NeedSchedule          bool    `json:"needSchedule"`
	Note                  *string `json:"note"`
	PlannedInterventionID *int64  `json:"plannedInterventionId"`
	Tags                  *[]any  `json:"tags"`
	TicketReference       *string `json:"ticketReference"`
}

func viewTask(t store.Task) taskView {
	return taskView{TaskID: t.ID, Function: t.Function, Status: t.Status, Comment: taskComment(t), StartDate: rfc3339(t.StartDate), DoneDate: rfc3339(t.DoneDate)}
}

func (s *Server) postReinstall(c *call) (int, any, error) {
	t, err := s.createDeployment(c, job.ShapeReinstall)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, viewTask(t), nil
}

func (s *Server) getTask(c *call) (int, any, error) {
	id, err := strconv.ParseInt(c.r.PathValue("taskId"), 10, 64)
	notFound := fail(kNotFound, job.APINotFound, "taskId = "+truncate(c.r.PathValue("taskId"), 20))
	if err != nil {
		return 0, nil, notFound
	}
	t, err := s.st.Task(c.r.Context(), c.server.ID, id)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil, notFound
	}
	if err != nil {
		return 0, nil, err
	}
	v := viewTask(t)
	v.Comment = s.taskCommentFor(c.r.Context(), t)
	v.LastUpdate = rfc3339(t.LastUpdate)
	return http.StatusOK, v, nil
}

// current is the server's current deployment, or APINoDeployment.
func (s *Server) current(c *call) (store.Deployment, error) {
	d, err := s.st.CurrentDeployment(c.r.Context(), c.server.ID)
	if errors.Is(err, store.ErrNotFound) {
		return d, fail(kNotFound, job.APINoDeployment, c.server.Name)
	}
	return d, err
}

// byoiStatus is OVH's dedicated.server.ByoiStatus.
type byoiStatus struct {
	Checksum   *string `json:"checksum"`
	Message    *string `json:"message"`
	Servername *string `json:"servername"`
	Status     string  `json:"status"`
}

func (s *Server) getBYOI(c *call) (int, any, error) {
	d, err := s.current(c)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, byoiStatus{Checksum: nullable(d.Checksum), Message: nullable(d.Message), Servername: &d.ServerName, Status: d.Status}, nil
}

func (s *Server) deleteBYOI(c *call) (int, any, error) {
	_, err := s.st.ClearDeployments(c.r.Context(), c.server.ID, s.cfg.Clock.Now())
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil, fail(kNotFound, job.APINoDeployment, c.server.Name)
	}
	if err != nil {
		return 0, nil, err
	}
	// Back to rescue: the power loop reboots a server with a BMC.
	if _, err := s.queueReboot(c.r.Context(), c.server, 0, 0); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nil, nil
}

// historyItem is one past or current deployment (our addition to OVH's
// API, for the Control Panel).
type historyItem struct {
	DeploymentID int64   `json:"deploymentId"`
	TaskID       int64   `json:"taskId"`
	Shape        string  `json:"shape"` // bringYourOwnImage or reinstall
	Status       string  `json:"status"`
	Code         *string `json:"code"`
	Message      string  `json:"message"`
	Checksum     *string `json:"checksum"`
	Attempts     int     `json:"attempts"`
	Cleared      bool    `json:"cleared"`
	CreatedAt    *string `json:"createdAt"`
	EndedAt      *string `json:"endedAt"`
	// Booted (issue 25): after done, watching, booted, noSignOfLife or
	// notWatched (no ConfigDrive); null before done.
	Booted   *string `json:"booted"`
	BootedAt *string `json:"bootedAt"`
}

func shapeName(s job.Shape) string {
	if s == job.ShapeReinstall {
		return "reinstall"
	}
	return "bringYourOwnImage"
}

func (s *Server) history(c *call) (int, any, error) {
	list, err := s.st.Deployments(c.r.Context(), c.server.ID, 100)
	if err != nil {
		return 0, nil, err
	}
	out := make([]historyItem, 0, len(list))
	for _, d := range list {
		booted, bootedAt := s.bootState(c.r.Context(), d)
		out = append(out, historyItem{Booted: booted, BootedAt: bootedAt, DeploymentID: d.ID, TaskID: d.TaskID, Shape: shapeName(d.Shape), Status: d.Status, Code: nullable(string(d.Code)), Message: d.Message,
			Checksum: nullable(d.Checksum), Attempts: d.Attempt, Cleared: d.Cleared, CreatedAt: rfc3339(d.CreatedAt), EndedAt: rfc3339(d.EndedAt)})
	}
	return http.StatusOK, out, nil
}

// eventView is one entry of a deployment's status history.
type eventView struct {
	N          int64   `json:"n"`
	Attempt    int     `json:"attempt"`
	Seq        int64   `json:"seq"`
	Source     string  `json:"source"`
	Time       string  `json:"time"`
	ReceivedAt *string `json:"receivedAt"`
	Status     string  `json:"status"`
	Step       string  `json:"step"`
	Kind       string  `json:"kind"`
	Code       string  `json:"code"`
	Message    string  `json:"message"`
	BytesDone  int64   `json:"bytesDone"`
	BytesTotal int64   `json:"bytesTotal"`
	Rate       float64 `json:"rate"` // bytes/s
}

type eventsView struct {
	DeploymentID int64       `json:"deploymentId"`
	Status       string      `json:"status"`
	Attempt      int         `json:"attempt"`
	Next         int64       `json:"next"` // pass as after= to get what follows
	Events       []eventView `json:"events"`
}

const maxEventsPage = 1000

func (s *Server) events(c *call) (int, any, error) {
	q := c.r.URL.Query()
	var d store.Deployment
	var err error
	if v := q.Get("deployment"); v != "" {
		id, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			return 0, nil, fail(kBadRequest, job.APIBadParam, "deployment", "a deployment id")
		}
		d, err = s.st.Deployment(c.r.Context(), c.server.ID, id)
		if errors.Is(err, store.ErrNotFound) {
			return 0, nil, fail(kNotFound, job.APINotFound, "deployment = "+strconv.FormatInt(id, 10))
		}
	} else {
		d, err = s.current(c)
	}
	if err != nil {
		return 0, nil, err
	}
	after, limit := int64(0), 500
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < 0 {
			return 0, nil, fail(kBadRequest, job.APIBadParam, "after", "a number")
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxEventsPage {
			return 0, nil, fail(kBadRequest, job.APIBadParam, "limit", fmt.Sprintf("1 to %d", maxEventsPage))
		}
	}
	entries, err := s.st.History(c.r.Context(), d.ID, after, limit)
	if err != nil {
		return 0, nil, err
	}
	v := eventsView{DeploymentID: d.ID, Status: d.Status, Attempt: d.Attempt, Next: after, Events: make([]eventView, 0, len(entries))}
	for _, e := range entries {
		v.Events = append(v.Events, eventView{N: e.N, Attempt: e.Attempt, Seq: e.Seq, Source: e.Source, Time: e.Time.UTC().Format(time.RFC3339Nano), ReceivedAt: rfc3339(e.Received),
			Status: string(e.Status), Step: string(e.Step), Kind: string(e.Kind), Code: string(e.Code), Message: e.Message, BytesDone: e.BytesDone, BytesTotal: e.BytesTotal, Rate: e.Rate})
		v.Next = e.N
	}
	return http.StatusOK, v, nil
}

// installStatus is OVH's GET .../install/status.
type installStatus struct {
	ElapsedTime int64          `json:"elapsedTime"`
	Progress    []progressStep `json:"progress"`
}

type progressStep struct {
	Comment string `json:"comment"`
	Status  string `json:"status"` // todo doing done error
	Error   string `json:"error"`
}

// Steps derives install/status from a deployment: steps before the
// current one are done, the current one doing (error when the deployment
// failed there), the rest todo; all done once the deployment is done.
func Steps(d store.Deployment, now time.Time) installStatus {
	end := now
	if !d.EndedAt.IsZero() {
		end = d.EndedAt
	}
	out := installStatus{ElapsedTime: int64(end.Sub(d.CreatedAt).Seconds()), Progress: make([]progressStep, 0, len(job.Steps))}
	cur := -1
	for i, st := range job.Steps {
		if st == d.Step {
			cur = i
		}
	}
	for i, st := range job.Steps {
		p := progressStep{Comment: job.StepComment(st), Status: "todo"}
		switch {
		case d.Status == store.StatusDone:
			p.Status = "done"
		case i < cur:
			p.Status = "done"
		case i == cur && d.Status == store.StatusDoing:
			p.Status = "doing"
		case i == cur || (cur < 0 && i == 0 && d.Status != store.StatusDoing):
			// failed here (or before any step: on the first one)
			p.Status, p.Error = "error", d.Message
		}
		out.Progress = append(out.Progress, p)
	}
	return out
}

func (s *Server) installStatus(c *call) (int, any, error) {
	d, err := s.current(c)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, Steps(d, s.cfg.Clock.Now()), nil
}

// hardwareView is the part of OVH's specifications/hardware the agent's
// inventory gives.
type hardwareView struct {
	BootMode   *string              `json:"bootMode"`
	DiskGroups []agentapi.DiskGroup `json:"diskGroups"`
	// The rest of OVH's dedicated.server.HardwareSpecifications (issue
	// 24), every one nullable there: the agent's inventory does not tell
	// them, so they are null rather than guessed.
	CoresPerProcessor       *int64        `json:"coresPerProcessor"`
	DefaultHardwareRaidSize *unitAndValue `json:"defaultHardwareRaidSize"`
	DefaultHardwareRaidType *string       `json:"defaultHardwareRaidType"`
	Description             *string       `json:"description"`
	ExpansionCards          []struct{}    `json:"expansionCards"`
	FormFactor              *string       `json:"formFactor"`
	MemorySize              *unitAndValue `json:"memorySize"`
	Motherboard             *string       `json:"motherboard"`
	NumberOfProcessors      *int64        `json:"numberOfProcessors"`
	ProcessorArchitecture   *string       `json:"processorArchitecture"`
	ProcessorName           *string       `json:"processorName"`
	ThreadsPerProcessor     *int64        `json:"threadsPerProcessor"`
	UsbKeys                 []struct{}    `json:"usbKeys"`
}

func (s *Server) hardware(c *call) (int, any, error) {
	v := hardwareView{DiskGroups: []agentapi.DiskGroup{}}
	if c.server.Inventory != nil {
		var inv agentapi.Inventory
		if err := json.Unmarshal(c.server.Inventory, &inv); err != nil {
			return 0, nil, err
		}
		v.BootMode = &inv.BootMode
		if inv.DiskGroups != nil {
			v.DiskGroups = inv.DiskGroups
		}
	}
	return http.StatusOK, v, nil
}
